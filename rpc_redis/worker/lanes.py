"""Lanes: receiving threads that pop, serve and reply without the event loop.

A plain function handed from an event loop to a thread pool and back costs two
thread wake-ups and several passes of the loop per call: more than Redis's own
round trip. So a worker whose services have plain functions runs ``concurrency``
lanes instead. Each lane is a thread with its own connection that BLPOPs a request,
calls the function right there, and sends the reply in the same write as its next
BLPOP: the shape of the bare LPUSH/BLPOP loop our benchmark calls the floor.

In a burst, one round trip and one thread wake-up per request would decide the cost.
So an LPOP rides behind each BLPOP and takes up to ``prefetch`` more requests if they
are waiting; they go to a list shared by the lanes (``ahead.py``), which each lane
empties before it asks Redis again. A lane going from one such request to the next
keeps its finished replies, to send them together, while its calls are quick. Taking
ahead must not make anyone wait behind a slow call, so the keeper, on the event loop,
looks every KEEPER_SECONDS while the lanes hold anything: it sends the replies kept by
a lane whose call has run that long, and gives requests unstarted that long back to
the head of their queue, where any free lane or worker takes them at once.

What a thread cannot serve well goes to the worker's event loop, and the lane waits
for it: ``async def`` methods and batches (whose items run concurrently).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio

from ..connection import REDIS_ERRORS, read_responses_sync, send_commands_sync
from ..printable import printable_exception
from .ahead import TakenAhead
from .connections import ReceivingConnections
from .handling import Outcome, WorkerStats
from .outage import Outages
from .receiving import (
    READ_GRACE_SECONDS,
    REFUSAL_PAUSE_SECONDS,
    AfterFailure,
    Command,
    WriteRetry,
    parse_received,
    receive_commands,
    rotate,
)
from .serving import Serving
from .writer import WRITE_READ_TIMEOUT

logger = logging.getLogger("rpc_redis.worker")

LANE_THREAD_PREFIX = "rpc-lane"
# A lane keeps finished replies to send together only while its calls take less than
# this and the oldest reply has waited less than this.
HOLD_SECONDS = 0.001
# How often the keeper looks, and how long a call or an unstarted request may keep
# others waiting before it steps in.
KEEPER_SECONDS = 0.005


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """An outcome's commands, waiting to go out in front of the lane's next BLPOP."""

    queue: str
    raw: bytes  # the request, for a dead letter that may follow
    outcome: Outcome
    commands: list[Command]
    retry: WriteRetry
    finished_at: float  # time.monotonic()


class Lanes:
    """A worker's lanes, the requests they took ahead, and the keeper that watches both."""

    def __init__(
        self,
        serving: Serving,
        outages: Outages,
        connections: ReceivingConnections,
        queues: list[str],
        *,
        count: int,
        prefetch: int,
        block_seconds: float,
        stats: WorkerStats,
        pool: redis.asyncio.ConnectionPool,
    ) -> None:
        """``pool``: the worker's, for giving requests taken ahead back to their queue."""
        self.serving = serving
        self.outages = outages
        self.connections = connections
        self.block_seconds = block_seconds
        self.ahead = TakenAhead(prefetch, count, pool, stats, self._call_keeper)
        self.lanes = [Lane(self, queues) for _ in range(count)]
        self.connected = asyncio.Event()  # every lane's connection is up, or met an outage
        self._unconnected = count
        self._unconnected_lock = threading.Lock()
        self._watched = False  # the keeper is looking, or has been asked to
        self._lanes_done = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: asyncio.Event | None = None

    @property
    def busy(self) -> int:
        """Lanes in a call now."""
        return sum(lane.busy for lane in self.lanes)

    async def run(self) -> None:
        """Run the lanes and the keeper until the worker stops and the lanes are done."""
        self._loop = asyncio.get_running_loop()
        self._watch = asyncio.Event()
        keeper = asyncio.create_task(self._keep())
        try:
            with ThreadPoolExecutor(len(self.lanes), thread_name_prefix=LANE_THREAD_PREFIX) as pool:
                await asyncio.gather(
                    *(self._loop.run_in_executor(pool, lane.run) for lane in self.lanes)
                )
        finally:
            self._lanes_done = True  # the keeper finishes its round, not cut off mid-write
            self._watch.set()
            await keeper
        # A give-back refused while the lanes were leaving left its requests here.
        while (request := self.ahead.take()) is not None:
            await self.serving.handle(request.queue, request.raw)

    def lane_connected(self) -> None:
        """From each lane, once its connection is up or has failed to come up."""
        with self._unconnected_lock:
            self._unconnected -= 1
            last = self._unconnected == 0
        if last:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self.connected.set)

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
            for lane in self.lanes:
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


class Lane:
    """One receiving thread of a worker: see the module's docstring."""

    def __init__(self, lanes: Lanes, queues: list[str]) -> None:
        self.serving = lanes.serving
        self.outages = lanes.outages
        self.ahead = lanes.ahead
        self.block_seconds = lanes.block_seconds
        self._lanes = lanes
        self.queues = list(queues)
        self.serving_since: float | None = None  # time.monotonic(), while in a call
        self._last_call_seconds = 0.0
        self._pending: list[PendingWrite] = []  # the keeper may take them: under _lock
        self._lock = threading.Lock()
        self._sent: list[PendingWrite] = []  # sent, their answers not read yet

    @property
    def busy(self) -> bool:
        return self.serving_since is not None

    @property
    def keeps_writes(self) -> bool:
        return self.serving_since is not None and bool(self._pending)

    def take_kept_writes(self, started_before: float) -> list[PendingWrite]:
        """For the keeper: the replies kept by this lane, if its call started before
        ``started_before``; they are the keeper's to write from then on."""
        with self._lock:
            since = self.serving_since
            if since is None or since > started_before or not self._pending:
                return []
            kept, self._pending = self._pending, []
            return kept

    def run(self) -> None:
        """Serve until the worker stops, then write what is still pending."""
        connection = self._lanes.connections.new_sync()
        try:
            with contextlib.suppress(*REDIS_ERRORS):  # the first BLPOP meets the outage
                connection.connect()  # type: ignore[no-untyped-call]
            self._lanes.lane_connected()
            while self._serve_next(connection):
                pass
            self._flush(connection)
        finally:
            connection.disconnect()  # type: ignore[no-untyped-call]

    def _serve_next(self, connection: redis.Connection) -> bool:
        """Serve one request, taken ahead or popped; False once the lane should stop."""
        # Marked busy before taking, so the keeper never misses a lane that keeps
        # replies: it looks at the shared list first, then at the lanes.
        self.serving_since = time.monotonic()
        request = self.ahead.take()
        if request is not None:
            self._send_kept_writes_if_due(connection)
            self._serve(request.queue, request.raw)
            return True
        self.serving_since = None
        if self.outages.stop_requested:
            return False
        try:
            popped = self._pop(connection)
        except Exception as exc:
            return self._after_failure(exc)
        self.outages.note_refusal(self.queues, None)
        if popped is not None:
            self.serving_since = time.monotonic()
            self._serve(*popped)
        return True

    def _after_failure(self, error: Exception) -> bool:
        """Ride out a failed pop as the shared rules say; False: stop receiving."""
        action = self.outages.ride_out(error, self.queues)
        if action is AfterFailure.STOP:
            return False
        if action is AfterFailure.PAUSE:
            return not self.outages.pause_from_thread(REFUSAL_PAUSE_SECONDS)
        self._after_lost_connection()
        return self.outages.wait_from_thread(error)

    def _pop(self, connection: redis.Connection) -> tuple[str, bytes] | None:
        """Send the pending writes, a BLPOP and an LPOP of requests waiting behind it, in
        one write; settle the writes as soon as their answers come, then wait."""
        rotate(self.queues)
        room = self.ahead.reserve()
        received = None
        try:
            commands = receive_commands(self.queues, self.block_seconds, room)
            send_commands_sync(connection, [*self._sending(), *commands])
            self._settle(read_responses_sync(connection, self._unread(), WRITE_READ_TIMEOUT))
            responses = read_responses_sync(
                connection, len(commands), self.block_seconds + READ_GRACE_SECONDS
            )
            received = parse_received(responses, self.queues, room)
        finally:
            more = received.more if received is not None else []
            self.ahead.add(room, self.queues[0], more)
        if received.request is None or received.queue is None:  # cut short at stop
            return None
        return received.queue, received.request

    def _sending(self) -> list[Command]:
        """Move the pending writes to those sent; their commands, to send now."""
        with self._lock:
            sending, self._pending = self._pending, []
        self._sent += sending
        return [command for write in sending for command in write.commands]

    def _unread(self) -> int:
        return sum(len(write.commands) for write in self._sent)

    def _send_kept_writes_if_due(self, connection: redis.Connection) -> None:
        """Before a request taken ahead: send the replies kept so far, unless the calls
        are quick and the replies fresh (then they wait to go out together). Their
        answers are read with the next BLPOP's."""
        with self._lock:
            if not self._pending or (
                self._last_call_seconds < HOLD_SECONDS
                and time.monotonic() - self._pending[0].finished_at < HOLD_SECONDS
            ):
                return
        try:
            commands = self._sending()  # none, if the keeper took them meanwhile
            if commands:
                send_commands_sync(connection, commands)
        except REDIS_ERRORS:
            self._after_lost_connection()  # the next BLPOP meets the outage and waits

    def _settle(self, results: list[Any]) -> None:
        """Judge each sent write by its answers. A follow-up (a dead letter for a reply
        key of the wrong type) goes to the event loop: this connection is in a BLPOP."""
        written, self._sent = self._sent, []
        for write in written:
            mine, results = results[: len(write.commands)], results[len(write.commands) :]
            follow_up = self.serving.handling.written(write.queue, write.outcome, mine)
            if follow_up is not None:
                self.serving.finish_from_thread(write.queue, write.raw, follow_up)

    def _serve(self, queue: str, raw: bytes) -> None:
        """Call and answer; ``serving_since`` is set by the caller."""
        write: PendingWrite | None = None
        started = time.monotonic()
        try:
            outcome = self.serving.outcome_in_thread(queue, raw)
            commands = self.serving.handling.commands(queue, raw, outcome)
            if commands:
                retry = WriteRetry(outcome.deadline)
                write = PendingWrite(queue, raw, outcome, commands, retry, time.monotonic())
        except Exception as exc:  # The last line of defence: log it, keep serving.
            logger.error(
                "unexpected error writing the outcome of a message from %s: %s",
                queue,
                printable_exception(exc),
            )
        finally:
            with self._lock:
                if write is not None:
                    self._pending.append(write)
                self.serving_since = None
            self._last_call_seconds = time.monotonic() - started

    def _after_lost_connection(self) -> None:
        """Writes sent without an answer go out again (a reply written twice is read
        once); those past retrying are logged and dropped."""
        now = time.time()
        with self._lock:
            self._pending, self._sent = self._sent + self._pending, []
            for write in self._pending:
                if write.retry.give_up_at < now:
                    logger.error(
                        "could not write the outcome of a request to %s: Redis unreachable",
                        write.queue,
                    )
            self._pending = [write for write in self._pending if write.retry.give_up_at >= now]

    def _flush(self, connection: redis.Connection) -> None:
        """At stop: write what is pending, retrying through an outage as long as allowed."""
        while self._pending or self._sent:
            try:
                sending = self._sending()
                if sending:
                    send_commands_sync(connection, sending)
                self._settle(read_responses_sync(connection, self._unread(), WRITE_READ_TIMEOUT))
            except REDIS_ERRORS as exc:
                self._after_lost_connection()
                if self._pending:
                    logger.debug("retrying %d write(s) at stop: %s", len(self._pending), exc)
                    time.sleep(self._pending[0].retry.next_delay() or 0)
