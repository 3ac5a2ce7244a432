"""Pub/sub in the worker: one connection subscribed to every channel and pattern the
worker's services listen to, each message handed to every handler that wants it.

At most once, as Redis pub/sub is: a message reaches the workers subscribed when it is
published, and nobody else. The connection is read by ``concurrency`` threads in turn
(leader and followers): the one holding the turn reads messages and runs their
handlers right there, a plain function on that thread, as a request's runs in a lane,
and an ``async def`` one on the event loop. It keeps the turn while its handlers are
quick, so a burst runs on one thread with no hand-over at every message; once it has
been in a handler for KEEPER_SECONDS, the keeper (``event_handling.Keeper``) gives the
turn to another thread, which reads on. While every thread is busy, nobody reads:
Redis keeps the messages, up to its ``client-output-buffer-limit pubsub``
(docs/events.md). With each read a thread takes up to ``prefetch`` more messages
already received, as many as its handlers' pace lets wait a few milliseconds; they go
to a list the turn's holder takes from before it reads, so that one stuck in a handler
keeps none of them waiting: its turn, and they, go to another thread.

A lost connection is waited out with the other receivers (``Outages``); then the
thread holding the turn subscribes again and says, in one line, for how long nobody
was listening: what was published meanwhile is lost. A message that is not an event
(not JSON...) is one log line. At a stop the worker kills the subscribed connection
(``ReceivingConnections.unblock_until``), which ends the read under way.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from .. import protocol
from ..connection import REDIS_ERRORS, send_commands_sync
from ..events import wire
from ..printable import printable
from .connections import ReceivingConnections
from .event_handling import EventHandler, EventSlots, EventTasks, HeldSlot, Keeper, Pace
from .outage import Outages
from .receiving import READ_GRACE_SECONDS, REFUSAL_PAUSE_SECONDS, AfterFailure

logger = logging.getLogger("rpc_redis.worker")

SUBSCRIBER_THREAD_PREFIX = "rpc-subscriber"
# How long a thread waits for its turn before it looks for a stop.
TURN_WAIT_SECONDS = 0.5


class Subscriber:
    """A worker's pub/sub receiver: its channels, its patterns, and their handlers."""

    def __init__(
        self,
        channels: dict[str, list[EventHandler]],
        patterns: dict[str, list[EventHandler]],
        outages: Outages,
        connections: ReceivingConnections,
        slots: EventSlots,
        tasks: EventTasks,
        keeper: Keeper,
        *,
        threads: int,
        prefetch: int,
        prefix: str,
        max_message_bytes: int,
        block_seconds: float,
    ) -> None:
        """``channels`` and ``patterns``: the handlers of each, by event channel (or
        pattern) as the services named them."""
        self.by_channel = {wire.channel_name(name, prefix): list(h) for name, h in channels.items()}
        self.by_pattern = {
            wire.channel_pattern(pattern, prefix): list(h) for pattern, h in patterns.items()
        }
        # A channel's handlers and event channel, by the Redis channel as it is read.
        self._routes = {
            redis_channel.encode(): (handlers, name)
            for (redis_channel, handlers), name in zip(
                self.by_channel.items(), channels, strict=True
            )
        }
        self.outages = outages
        self.connections = connections
        self.slots = slots
        self.tasks = tasks
        self.keeper = keeper
        keeper.add(self._step_in)
        self.threads = threads
        self.prefetch = prefetch
        self.prefix = prefix
        self.max_message_bytes = max_message_bytes
        self.block_seconds = block_seconds
        self.connected = asyncio.Event()  # subscribed, or met an outage trying
        # The turn: which thread reads the connection, and since when it is in a handler.
        self._turn_lock = threading.Lock()  # held directly, as EventSlots' is
        self._turn = threading.Condition(self._turn_lock)
        self._holder: int | None = None
        self._busy_since: float | None = None
        # thread -> (in a handler since, the handler, the channel, said to be overdue)
        self._handling: dict[int, tuple[float, EventHandler, str, bool]] = {}
        self._ahead: deque[list[Any]] = deque()  # read, not yet handled: under _turn
        self._connection: redis.Connection | None = None
        self._subscribed = False
        self._silent = 0  # reads in a row that found nothing, the last one with a PING out
        self._lost_since: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def sources(self) -> list[str]:
        return [*self.by_channel, *self.by_pattern]

    async def run(self) -> None:
        """Subscribe and handle messages until the worker stops; then wait for the
        handlers running on the loop."""
        loop = self._loop = asyncio.get_running_loop()
        # On a cluster, to any node: a PUBLISH on one reaches the subscribers of all.
        self._connection = self.connections.new_event_sync(None)
        try:
            with ThreadPoolExecutor(
                self.threads, thread_name_prefix=SUBSCRIBER_THREAD_PREFIX
            ) as pool:
                await asyncio.gather(
                    *(loop.run_in_executor(pool, self._take_turns) for _ in range(self.threads))
                )
        finally:
            self._connection.disconnect()  # type: ignore[no-untyped-call]
            self.connected.set()
            await self.tasks.drain()

    # -- on the receiving threads --------------------------------------------------------

    def _take_turns(self) -> None:
        me = threading.get_ident()
        pace = Pace(self.prefetch)
        slot = HeldSlot(self.slots)  # for plain handlers, across the messages of one read
        # Looked up once: a burst goes round this loop once per message.
        stopping, watch, monotonic = self.outages.stopping, self.keeper.watch, time.monotonic
        next_message, handle = self._next, self._handle
        try:
            while not stopping.requested:
                message = next_message(me, pace, slot)
                if message is None:
                    continue
                started = monotonic()
                watch()
                handle(message, slot)
                pace.took(monotonic() - started)
        finally:
            slot.give_back()

    def _next(self, me: int, pace: Pace, slot: HeldSlot) -> list[Any] | None:
        """The next message for this thread: one read ahead, else, with the turn (this
        thread keeps it, until the keeper takes it while this thread is in a handler),
        one from the connection. Only the turn's holder reads the connection, and the
        thread holds its slot only while it takes what was read ahead."""
        with self._turn_lock:
            if self._holder == me:
                if self._ahead:
                    self._busy_since = time.monotonic()
                    return self._ahead.popleft()
                self._busy_since = None  # out of its handler, about to read
        slot.give_back()
        with self._turn_lock:
            if self._holder is None:
                self._holder = me
            elif self._holder != me:
                # What was read ahead is the holder's too: a thread that woke to look
                # and took it would run beside the holder, and a burst would hand the
                # GIL over at every message. A holder stuck in a handler loses the
                # turn (the keeper), and the thread that takes it, these messages.
                self._turn.wait(TURN_WAIT_SECONDS)
                return None
            if self._ahead:
                self._mark_busy(me)
                return self._ahead.popleft()
        messages = self._next_messages(pace.ahead())
        with self._turn_lock:
            if not messages:
                return None
            self._ahead.extend(messages[1:])
            self._mark_busy(me)
            return messages[0]

    def _mark_busy(self, me: int) -> None:
        """Under the turn's lock: the holder is in a handler from now (none else counts)."""
        if self._holder == me:
            self._busy_since = time.monotonic()

    def _step_in(self, cutoff: float) -> bool:
        """The keeper's look: a holder in a handler since before ``cutoff`` loses the
        turn to another thread, which takes what was read ahead, then reads on; whether
        a thread is in a handler now (the holder, or one that lost the turn in it: the
        keeper looks on, to say when it runs past its time limit)."""
        self._say_overdue()
        with self._turn_lock:
            since = self._busy_since
            if since is not None and since < cutoff and self._holder is not None:
                self._holder, self._busy_since = None, None
                self._turn.notify()
            return since is not None or bool(self._handling)

    def _say_overdue(self) -> None:
        """A plain handler past its time limit on a receiving thread cannot be cut short
        (a thread cannot be): one log line says so, once; the keeper has handed the
        turn on, and the thread comes back when the handler returns."""
        now = time.monotonic()
        overdue = []
        with self._turn_lock:
            for thread, (since, handler, channel, said) in self._handling.items():
                limit = handler.watched_limit
                if not said and limit is not None and since < now - limit:
                    self._handling[thread] = (since, handler, channel, True)
                    overdue.append((handler, channel, limit))
        for handler, channel, limit in overdue:
            logger.error(
                "%s.%s ran past its time limit of %gs on a message of channel %s: it "
                "holds one of the events' slots until it returns",
                handler.service,
                handler.method.name,
                limit,
                printable(channel),
            )

    def wake_all(self) -> None:
        """At a stop: threads waiting for the turn look at once."""
        with self._turn_lock:
            self._turn.notify_all()

    def _next_messages(self, ahead: int) -> list[list[Any]]:
        """With the turn: the next message, and up to ``ahead`` more already here."""
        message = self._next_message()
        if message is None:
            return []
        messages = [message]
        connection = self._connection
        assert connection is not None
        try:
            while len(messages) <= ahead and connection.can_read(timeout=0):
                more = connection.read_response()  # here already: no second look
                if isinstance(more, list) and len(more) >= 3:
                    messages.append(more)
        except REDIS_ERRORS:
            pass  # the next turn meets it
        return messages

    def _next_message(self) -> list[Any] | None:
        """With the turn: the next message, None if there was none (or a stop, or an
        outage was waited out)."""
        connection = self._connection
        assert connection is not None
        if self.outages.stop_requested:
            return None  # the turn's last holder at a stop: no subscribing again
        try:
            if not self._subscribed:
                connection = self._subscribe(connection)
            if not connection.can_read(timeout=self.block_seconds):
                self._no_message(connection)
                return None
            response = connection.read_response()
        except Exception as exc:
            self._subscribed = False
            self._lost_since = self._lost_since or time.time()
            self._set_connected()
            if not self.outages.stop_requested:
                self._after_failure(exc)
            return None
        self._silent = 0
        return response if isinstance(response, list) and len(response) >= 3 else None

    def _subscribe(self, connection: redis.Connection) -> redis.Connection:
        """Subscribe anew, on a fresh connection; on a cluster to the node first listed
        now (the one lost may be gone for good), which becomes the connection read."""
        connection.disconnect()  # type: ignore[no-untyped-call]
        if self.connections.is_cluster:
            connection = self._connection = self.connections.new_event_sync(None)
        connection.connect()  # type: ignore[no-untyped-call]
        commands = []
        if self.by_channel:
            commands.append(("SUBSCRIBE", *self.by_channel))
        if self.by_pattern:
            commands.append(("PSUBSCRIBE", *self.by_pattern))
        send_commands_sync(connection, commands)
        for _ in self.sources:  # one confirmation per channel and pattern
            if not connection.can_read(timeout=READ_GRACE_SECONDS):
                raise TimeoutError("Redis did not confirm the subscriptions")
            connection.read_response()
        self._subscribed, self._silent = True, 0
        if self._lost_since is not None:
            self._say_what_was_missed(self._lost_since)
            self._lost_since = None
        self._set_connected()
        return connection

    def _no_message(self, connection: redis.Connection) -> None:
        """A read found nothing for a block: ask Redis for a PING; a second one finds it
        gone (a connection can die without a word)."""
        self._silent += 1
        if self._silent > 1:
            raise TimeoutError(f"no answer from Redis to a PING in {self.block_seconds}s")
        send_commands_sync(connection, [("PING",)])

    def _handle(self, message: list[Any], slot: HeldSlot) -> None:
        """Hand a message to each of its handlers, each when a slot is free: a plain
        one runs here in the thread's ``slot``, an async one's task holds its own."""
        kind = message[0]
        if kind == b"message" and message[1] in self._routes:
            handlers, channel = self._routes[message[1]]
            raw = message[2]
        elif kind == b"pmessage" and len(message) >= 4:
            handlers = self.by_pattern.get(_text(message[1])) or []
            channel = wire.event_channel(_text(message[2]), self.prefix)
            raw = message[3]
        else:
            return  # a confirmation, a PONG
        event = wire.decode_event(raw, self.max_message_bytes)
        if isinstance(event, str):
            logger.warning("ignored a message on channel %s: %s", printable(channel), event)
            return
        for handler in handlers:
            plain = handler.in_thread is not None
            if plain:
                if not (slot.held or slot.take()):
                    return  # stopping
            elif not self.slots.take_in_thread():
                return  # stopping
            call = handler.call_for(event, channel)
            if not plain:  # async: on the loop, and the thread reads on
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self.tasks.start, handler.run(call))
                continue
            me = threading.get_ident()
            with self._turn_lock:
                self._handling[me] = (time.monotonic(), handler, channel, False)
            try:
                handler.run_here(call, self._loop)  # type: ignore[arg-type]
            finally:
                with self._turn_lock:
                    self._handling.pop(me, None)

    def _after_failure(self, error: Exception) -> None:
        """Ride out a lost subscription with the other receivers."""
        action = self.outages.ride_out(error, self.sources)
        if action is AfterFailure.PAUSE:
            self.outages.pause_from_thread(REFUSAL_PAUSE_SECONDS)
        elif action is AfterFailure.WAIT_FOR_REDIS:
            self.outages.wait_from_thread(error)

    def _set_connected(self) -> None:
        if not self.connected.is_set() and self._loop is not None:
            self._loop.call_soon_threadsafe(self.connected.set)

    def _say_what_was_missed(self, lost_since: float) -> None:
        logger.warning(
            "subscribed again to %s after %.1fs without a subscription: whatever was "
            "published to them meanwhile is lost (pub/sub is at most once)",
            protocol.summarize(self.sources),
            time.time() - lost_since,
        )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
