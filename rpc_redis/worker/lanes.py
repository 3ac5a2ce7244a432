"""Lanes: receiving threads that pop, serve and reply without the event loop.

A plain function handed from an event loop to a thread pool and back costs two
thread wake-ups and several passes of the loop per call: more than Redis's own
round trip. So a worker whose services have plain functions runs ``concurrency``
lanes instead (``lane.py``). Each lane is a thread with its own connection that BLPOPs
a request, calls the function right there, and sends the reply in the same write as
its next BLPOP: the shape of the bare LPUSH/BLPOP loop our benchmark calls the floor.

In a burst, one round trip and one thread wake-up per request would decide the cost.
So an LPOP rides behind each BLPOP and takes up to ``prefetch`` more requests if they
are waiting; they go to a list shared by the lanes (``ahead.py``), which each lane
empties before it asks Redis again. A lane going from one such request to the next
keeps its finished replies, to send them together, while its calls are quick. Taking
ahead must not make anyone wait behind a slow call, so the keeper, on the event loop,
looks every KEEPER_SECONDS while the lanes hold anything: it sends the replies kept by
a lane whose call has run that long, and gives requests unstarted that long back to
the head of their queue, where any free lane or worker takes them at once.

A plain function runs on its lane with no time limit of its own, to cost nothing; but
no call may hold a lane for ever. The overseer, on the event loop, looks every
OVERSEE_SECONDS for a call that has run past its caller's deadline (and the grace the
event loop's own bounds give): that lane is abandoned, to end when its call returns,
its result unwritten, and a new lane takes its place. At a stop, the lanes still in a
call when the drain timeout ends are abandoned too, and named.

What a thread cannot serve well goes to the worker's event loop, and the lane waits
for it: ``async def`` methods and batches (whose items run concurrently).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

from .. import protocol
from ..connection import AsyncRoutes
from .ahead import TakenAhead
from .bounds import DEADLINE_GRACE
from .connections import ReceivingConnections
from .handling import WorkerStats
from .lane import Lane
from .outage import Outages
from .serving import Serving

logger = logging.getLogger("rpc_redis.worker")

LANE_THREAD_PREFIX = "rpc-lane"
# How often the keeper looks, and how long a call or an unstarted request may keep
# others waiting before it steps in.
KEEPER_SECONDS = 0.005
# How often the overseer looks, and how far past a call's deadline and grace it lets a
# lane go: the event loop's own bounds come first.
OVERSEE_SECONDS = 0.25
OVERRUN_MARGIN = 0.5


class Lanes:
    """A worker's lanes, the requests they took ahead, and the keeper and the overseer
    that watch them."""

    def __init__(
        self,
        serving: Serving,
        outages: Outages,
        connections: ReceivingConnections,
        groups: list[list[str]],
        *,
        count: int,
        prefetch: int,
        block_seconds: float,
        stats: WorkerStats,
        routes: AsyncRoutes,
    ) -> None:
        """``groups``: the queues each BLPOP waits on together (one group on a single
        node, one per hash slot on a cluster), shared out among the lanes, each group
        served by one lane at least; ``routes``: the worker's, for giving requests taken
        ahead back to their queue."""
        self.serving = serving
        self.outages = outages
        self.connections = connections
        self.count = count = max(count, len(groups))
        self.block_seconds = block_seconds
        self.ahead = TakenAhead(prefetch, count, routes, stats, self._call_keeper)
        # Those not abandoned.
        self.lanes = [self._new_lane(groups[n % len(groups)]) for n in range(count)]
        self.connected = asyncio.Event()  # every lane's connection is up, or met an outage
        self.abandoned: list[str] = []  # the requests left running at the drain timeout
        self.abandoned_running = 0  # abandoned lanes whose call has not returned
        self._started = 0
        self._unconnected = count
        self._unconnected_lock = threading.Lock()
        self._watched = False  # the keeper is looking, or has been asked to
        self._lanes_done = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: asyncio.Event | None = None
        self._finished: dict[Lane, asyncio.Future[None]] = {}
        self._deadlines: dict[Lane, tuple[bytes, float | None]] = {}

    @property
    def busy(self) -> int:
        """Lanes in a call now (not counting those abandoned)."""
        return sum(lane.busy for lane in self.lanes)

    def _new_lane(self, queues: list[str]) -> Lane:
        return Lane(
            self.serving,
            self.outages,
            self.ahead,
            queues,
            block_seconds=self.block_seconds,
            connections=self.connections,
            on_connected=self._lane_connected,
        )

    async def run(self) -> None:
        """Run the lanes, the keeper and the overseer until the worker stops and the
        lanes are done, or the drain timeout abandons those still in a call."""
        self._loop = asyncio.get_running_loop()
        self._watch = asyncio.Event()
        keeper = asyncio.create_task(self._keep())
        overseer = asyncio.create_task(self._oversee())
        try:
            for lane in self.lanes:
                self._start(lane)
            await self._until_lanes_done()
        finally:
            overseer.cancel()
            self._lanes_done = True  # the keeper finishes its round, not cut off mid-write
            self._watch.set()
            await keeper
            with contextlib.suppress(asyncio.CancelledError):
                await overseer
        # A give-back refused while the lanes were leaving left its requests here; the
        # worker's drain bounds them.
        while (request := self.ahead.take()) is not None:
            self.serving.handle_soon(request.queue, request.raw)

    def _start(self, lane: Lane) -> None:
        assert self._loop is not None
        finished: asyncio.Future[None] = self._loop.create_future()
        finished.add_done_callback(lambda _: self._lane_ended(lane))
        self._finished[lane] = finished
        self._started += 1
        # Daemon threads, unlike an executor's: a lane abandoned in a call that never
        # returns must not keep the process from exiting.
        thread = threading.Thread(
            target=self._run_lane,
            args=(lane, finished),
            name=f"{LANE_THREAD_PREFIX}_{self._started - 1}",
            daemon=True,
        )
        thread.start()

    def _run_lane(self, lane: Lane, finished: asyncio.Future[None]) -> None:
        """A lane's thread: run it, then tell the event loop (if it is still there)."""
        assert self._loop is not None
        error: BaseException | None = None
        try:
            lane.run()
        except BaseException as exc:  # a bug: the worker's run raises it
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is gone
            self._loop.call_soon_threadsafe(_settle, finished, error)

    def _lane_ended(self, lane: Lane) -> None:
        self._finished.pop(lane, None)
        self._deadlines.pop(lane, None)
        if lane.abandoned:
            self.abandoned_running -= 1

    async def _until_lanes_done(self) -> None:
        """Wait for every lane not abandoned to return; after a stop, at most until the
        drain timeout, when the lanes still in a call are abandoned (and named)."""
        stopping = self.outages.stopping
        while True:
            self.lanes = [lane for lane in self.lanes if self._running(lane)]
            if not self.lanes:
                return
            waiting: set[asyncio.Future[Any]] = {self._finished[lane] for lane in self.lanes}
            left = stopping.drain_left()
            stop = asyncio.ensure_future(stopping.event.wait()) if left is None else None
            done, _ = await asyncio.wait(
                waiting | ({stop} if stop else set()),
                timeout=left,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if stop is not None:
                stop.cancel()
            for future in done - {stop}:
                future.result()  # a lane that raised: a bug, raised here
            if left is not None and not done:
                for lane in [lane for lane in self.lanes if self._running(lane)]:
                    self._abandon(lane, at_stop=True)
                return

    def _running(self, lane: Lane) -> bool:
        finished = self._finished.get(lane)
        return finished is not None and not finished.done()

    def _lane_connected(self) -> None:
        """From each lane, once its connection is up or has failed to come up."""
        with self._unconnected_lock:
            self._unconnected -= 1
            last = self._unconnected == 0
        if last:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self.connected.set)

    # -- the overseer, on the event loop -----------------------------------------------

    async def _oversee(self) -> None:
        while True:
            await asyncio.sleep(OVERSEE_SECONDS)
            now = time.time()
            for lane in list(self.lanes):
                deadline = self._deadline_of(lane)
                if deadline is not None and now > deadline + DEADLINE_GRACE + OVERRUN_MARGIN:
                    self._abandon(lane, at_stop=False)

    def _deadline_of(self, lane: Lane) -> float | None:
        """The deadline of the request a lane has served for a while, if it has one;
        read once per request, and only for calls that last."""
        since, request = lane.serving_since, lane.serving_request
        if since is None or request is None or time.monotonic() - since < OVERSEE_SECONDS:
            return None
        raw = request[1]
        known = self._deadlines.get(lane)
        if known is None or known[0] is not raw:
            message = protocol.decode_message(raw)
            known = (raw, message.deadline if isinstance(message, protocol.Incoming) else None)
            self._deadlines[lane] = known
        return known[1]

    def _abandon(self, lane: Lane, *, at_stop: bool) -> None:
        """Give a lane up to the call it is in: its kept replies are written from here,
        its call's outcome never; outside a stop, a new lane takes its place (up to as
        many abandoned as there are lanes: past that, the worker serves on fewer)."""
        left = lane.abandon()
        self.lanes.remove(lane)
        if lane in self._finished:
            self.abandoned_running += 1
        for write in left.kept:
            self.serving.finish_soon(write.queue, write.raw, write.outcome)
        if left.serving is not None:
            queue, raw = left.serving
            if at_stop:
                self.abandoned.append(self.serving.handling.describe(queue, raw))
            else:
                self.serving.handling.cut_short(queue, raw)
        if at_stop or self.outages.stop_requested:
            return
        if self.abandoned_running <= self.count:
            replacement = self._new_lane(lane.group)
            self.lanes.append(replacement)
            self._start(replacement)
        else:
            logger.error(
                "%d lanes are held by calls that ran past their deadline; serving on %d",
                self.abandoned_running,
                len(self.lanes),
            )

    # -- the keeper, on the event loop -----------------------------------------------------

    def _call_keeper(self) -> None:
        """From a lane that took requests ahead: wake the keeper, unless it is looking."""
        if not self._watched:
            self._watched = True
            assert self._loop is not None and self._watch is not None
            self._loop.call_soon_threadsafe(self._watch.set)

    async def _keep(self) -> None:
        assert self._watch is not None
        while not self._lanes_done:
            await self._watch.wait()
            await asyncio.sleep(KEEPER_SECONDS)
            cutoff = time.monotonic() - KEEPER_SECONDS
            for lane in list(self.lanes):
                for write in lane.take_kept_writes(started_before=cutoff):
                    self.serving.finish_soon(write.queue, write.raw, write.outcome)
            await self.ahead.give_back(taken_before=cutoff)
            if self._holding():
                continue
            self._watched = False
            if self._holding():  # taken ahead just now, by a lane that saw us watching
                self._watched = True
            else:
                self._watch.clear()

    def _holding(self) -> bool:
        return bool(self.ahead) or any(lane.keeps_writes for lane in self.lanes)


def _settle(finished: asyncio.Future[None], error: BaseException | None) -> None:
    if finished.done():
        return
    if error is None:
        finished.set_result(None)
    else:
        finished.set_exception(error)
