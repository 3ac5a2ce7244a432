"""Handling an event in the worker, the one way for pub/sub and durable events alike.

An event handler runs as a method does (``dispatch.Handler``): its call current, the
middleware's ``before_call`` and ``after_call`` around it, the time limit, a failure
logged in one line. Events are received on threads (``subscriber.py``,
``consumer.py``), where a plain handler runs right away, on the thread that received
its event, as a request's does in a lane; an ``async def`` handler runs on the event
loop. Events take slots of their own, ``concurrency`` of them for pub/sub and durable
events together, taken from threads and from the loop alike (``EventSlots``), so a
flood of events cannot starve requests, nor the reverse; a receiving thread holds its
slot across the events of one read (``HeldSlot``), not taking it again for each.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from jsonrpcserver import JsonRpcError
from jsonrpcserver.sentinels import NODATA

from ..context import CallContext, received_call
from ..errors import RpcError
from ..events import wire
from ..printable import printable
from ..service import Method

logger = logging.getLogger("rpc_redis.worker")

# Events a receiving thread takes ahead wait behind its calls: for about this long at
# most, at the pace its handlers have kept lately (what lanes allow a request, too).
AHEAD_BUDGET_SECONDS = 0.005


@dataclass(frozen=True, slots=True)
class EventHandler:
    """One service's handler for an event source, ready to run on the loop (``run``)
    or, for a plain function, on the thread that received the event (``run_plain``)."""

    service: str
    method: Method
    on_loop: Callable[..., Any]  # Dispatcher.event_handler's: (call, data) -> Success
    in_thread: Callable[..., Any] | None  # the same, for a plain function on this thread
    # The limit a receiving thread's handler runs to before its receiver gives up on it
    # (None: none, or one the handler threads keep).
    watched_limit: float | None = None

    def call_for(
        self,
        event: wire.Event,
        source: str,
        delivery_count: int = 1,
        event_id: str | None = None,
    ) -> CallContext:
        """The call an event is served as, from its channel or topic (``source``): its
        data the one param, a copy of its meta (a handler may change it), no reply."""
        # service, method, params, meta, request_id, deadline, is_notification, event,
        # delivery_count, event_id
        return received_call(
            self.service,
            self.method.name,
            [event.data],
            dict(event.meta) if event.meta else {},
            None,
            None,
            True,
            source,
            delivery_count,
            event_id,
        )

    async def run(self, call: CallContext) -> RpcError | None:
        """Run the handler on the loop: None if it returned, else the error its failure
        maps to, said in one log line."""
        try:
            await self.on_loop(call, *call.params)
        except JsonRpcError as exc:
            return self._failure(exc, call)
        return None

    def run_here(self, call: CallContext, loop: asyncio.AbstractEventLoop) -> RpcError | None:
        """From a receiving thread: a plain handler runs here, an async one on the loop,
        and this thread waits for it."""
        if self.in_thread is None:
            return asyncio.run_coroutine_threadsafe(self.run(call), loop).result()
        try:
            self.in_thread(call, *call.params)
        except JsonRpcError as exc:
            return self._failure(exc, call)
        return None

    def _failure(self, exc: JsonRpcError, call: CallContext) -> RpcError:
        """The error a handler's failure maps to. The handler's own exceptions are
        logged where they are mapped; an RpcError it raised, or a hook's refusal, here,
        as there is no caller to tell."""
        data = None if exc.data is NODATA else exc.data
        error = RpcError(exc.message, data, code=exc.code)
        if isinstance(exc.__cause__, RpcError):
            logger.error(
                "%s.%s failed on an event from %s: %s",
                self.service,
                self.method.name,
                printable(call.event),
                error,
            )
        return error


class EventSlots:
    """The events' slots, taken by receiving threads and by the event loop alike."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.free = count
        # Held as a plain Lock (C-level `with`, where a Condition's is Python), waited on
        # and notified through its Condition: no RLock either, cheaper still.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._waiting: list[asyncio.Future[None]] = []  # the loop's takers
        self.closed = False

    @property
    def taken(self) -> int:
        return self.count - self.free

    def take_in_thread(self) -> bool:
        """Wait for a slot; False if the slots were closed (the worker stops) first."""
        with self._lock:
            while self.free == 0 and not self.closed:
                self._changed.wait()
            if self.closed:
                return False
            self.free -= 1
            return True

    async def take(self) -> None:
        """Wait for a slot, on the event loop."""
        while True:
            with self._lock:
                if self.free:
                    self.free -= 1
                    return
                waiter = asyncio.get_running_loop().create_future()
                self._waiting.append(waiter)
            await waiter

    def take_now(self, most: int) -> int:
        """Up to ``most`` free slots, without waiting; possibly none."""
        with self._lock:
            taken = min(most, self.free)
            self.free -= taken
            return taken

    def give_back(self, count: int = 1) -> None:
        """Thread-safe: wakes a waiting thread, and the loop's takers."""
        if not count:
            return
        with self._lock:
            self.free += count
            if self.free == count:  # none was free: someone may be waiting
                self._changed.notify(count)
            if not self._waiting:
                return
            waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.get_loop().call_soon_threadsafe(_wake, waiter)

    def close(self) -> None:
        """At a stop: threads waiting for a slot give up."""
        with self._lock:
            self.closed = True
            self._changed.notify_all()


class HeldSlot:
    """One of the events' slots, held by a receiving thread across the events it took
    together: taken for the first of them, given back before the thread reads or waits
    again (a read may block, and the slots bound what runs). A burst takes one slot per
    read so, not one per event."""

    __slots__ = ("held", "slots")

    def __init__(self, slots: EventSlots) -> None:
        self.slots = slots
        self.held = False

    def take(self) -> bool:
        """Hold a slot, waiting for one; False if the slots were closed (the worker
        stops) first. Holding one already, check ``held`` rather than call this."""
        if not self.held:
            if not self.slots.take_in_thread():
                return False
            self.held = True
        return True

    def give_back(self) -> None:
        if self.held:
            self.held = False
            self.slots.give_back()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class EventTasks:
    """The events handled on the loop (claimed ones, async handlers' from threads), each
    in a task holding one of the events' slots, all waited for when the worker stops."""

    def __init__(self, slots: EventSlots) -> None:
        self.slots = slots
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, handling: Coroutine[Any, Any, Any]) -> None:
        """Run a handling that holds a slot already taken; the slot is given back after."""
        task = asyncio.create_task(handling)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self.slots.give_back()
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            logger.error("unexpected error handling an event: %s: %s", type(error).__name__, error)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._tasks)


class Pace:
    """How long a receiving thread's handlers take, lately, and so how many events it
    may take ahead: a burst of quick events costs a round trip per few, and a slow
    handler keeps few (none, past the budget) waiting behind it."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.average = 0.0  # seconds per call, moving

    def ahead(self) -> int:
        if not self.most:
            return 0
        return min(self.most, int(AHEAD_BUDGET_SECONDS / max(self.average, 1e-5)))

    def took(self, seconds: float) -> None:
        self.average += (seconds - self.average) / 4


# How long every working thread of a receiver may be in a handler before the keeper
# calls another one in: as long as lanes let a call keep others waiting.
KEEPER_SECONDS = 0.005
KEEPER_THREAD = "rpc-events-keeper"


class Keeper:
    """Calls threads in from a receiver's reserve when its working ones are all stuck.

    A burst of quick events runs best on one thread: no thread hands over to another at
    every event, as the floor's loop does. A slow handler must not hold the others up,
    though. So a receiver works on few threads and keeps the rest in reserve; a thread
    that starts handling calls ``watch``, and while any is in a handler the keeper looks
    every KEEPER_SECONDS and asks each receiver to ``step_in``: to bring a thread in
    from its reserve if those working have all been in a handler that long. It looks
    only while asked to, as the lanes' keeper does, and from a thread of its own: on
    the event loop, each of its 200 looks a second in a burst went through asyncio's
    timers and a task's step, and took the GIL from the working thread for as long.
    """

    def __init__(self) -> None:
        self._steps: list[Callable[[float], bool]] = []  # step_in(cutoff) -> still busy?
        self._watched = False
        self._asked = threading.Event()
        self._stopped = False

    def add(self, step_in: Callable[[float], bool]) -> None:
        self._steps.append(step_in)

    def watch(self) -> None:
        """From a thread that starts handling: look, unless looking already."""
        if not self._watched:
            self._watched = True
            self._asked.set()

    async def run(self, done: asyncio.Event) -> None:
        """Look, on the keeper's thread, until ``done``."""
        thread = threading.Thread(target=self._keep, name=KEEPER_THREAD, daemon=True)
        thread.start()
        try:
            await done.wait()
        finally:
            self._stopped = True
            self._asked.set()
            thread.join(1.0)  # it sleeps KEEPER_SECONDS at most, then sees the stop

    def _keep(self) -> None:
        while not self._stopped:
            self._asked.wait()
            self._asked.clear()
            while not self._stopped:
                time.sleep(KEEPER_SECONDS)
                if not self._look(time.monotonic() - KEEPER_SECONDS):
                    break
            self._watched = False
            if self._look(float("-inf")):
                self.watch()  # busy again just now, by a thread that saw us looking

    def _look(self, cutoff: float) -> bool:
        """Each receiver's step in; whether any is busy. A failure is a bug: logged, and
        the keeper looks again when next asked to (not 200 times a second)."""
        try:
            return any([step_in(cutoff) for step_in in self._steps])
        except Exception:
            logger.exception("the events' keeper failed to look at the receivers")
            return False
