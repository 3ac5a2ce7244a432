"""Lanes: receiving threads that pop, serve and reply without the event loop.

A plain function handed from an event loop to a thread pool and back costs two
thread wake-ups and several passes of the loop per call: more than Redis's own
round trip. So a worker whose services have plain functions runs ``concurrency``
lanes instead. Each lane is a thread with its own connection that BLPOPs a request,
calls the function right there, and sends the reply in the same write as its next
BLPOP: the shape of the bare LPUSH/BLPOP loop our benchmark calls the floor.

What a thread cannot serve well goes to the worker's event loop, and the lane waits
for it: ``async def`` methods and batches (whose items run concurrently).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import redis
import redis.exceptions

from .connection import REDIS_ERRORS, read_responses_sync, send_commands_sync
from .handling import Outcome, give_up_time
from .writer import WRITE_READ_TIMEOUT, Command, raise_first_error

if TYPE_CHECKING:
    from .worker import Worker

logger = logging.getLogger("rpc_redis.worker")

LANE_THREAD_PREFIX = "rpc-lane"


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """An outcome's commands, waiting to go out in front of the lane's next BLPOP."""

    queue: str
    raw: bytes  # the request, for a dead letter that may follow
    outcome: Outcome
    commands: list[Command]
    give_up_at: float


class Lane:
    """One receiving thread of a worker: see the module's docstring."""

    def __init__(self, worker: Worker, queues: list[str]) -> None:
        self.worker = worker
        self.queues = list(queues)
        self.busy = False
        self._pending: list[PendingWrite] = []

    def run(self) -> None:
        """Serve until the worker stops, then write what is still pending."""
        connection = self.worker.receiving_connection_sync()
        try:
            while not self.worker.stopping:
                try:
                    popped = self._pop(connection)
                except REDIS_ERRORS as exc:
                    self._drop_expired_writes()
                    if not self.worker.wait_for_redis_from_thread(exc):
                        break
                    continue
                except redis.exceptions.ResponseError as exc:  # e.g. a queue holding a string
                    self.worker.note_refusal(self.queues, exc)
                    if self.worker.sleep_unless_stopped_from_thread(1.0):
                        break
                    continue
                self.worker.note_refusal(self.queues, None)
                if popped is not None:
                    self._serve(*popped)
            self._flush(connection)
        finally:
            connection.disconnect()  # type: ignore[no-untyped-call]

    def _pop(self, connection: redis.Connection) -> tuple[str, bytes] | None:
        """Send the pending writes and a BLPOP in one write; settle the writes as soon as
        their answers come, then wait for a request."""
        if len(self.queues) > 1:  # rotated, so that a busy service cannot starve the others
            self.queues.append(self.queues.pop(0))
        writes = [command for write in self._pending for command in write.commands]
        send_commands_sync(
            connection, [*writes, ("BLPOP", *self.queues, self.worker.block_seconds)]
        )
        self._settle(read_responses_sync(connection, len(writes), WRITE_READ_TIMEOUT))
        [popped] = read_responses_sync(connection, 1, self.worker.block_seconds + 5)
        raise_first_error([popped])
        if popped is None:
            return None
        queue, raw = cast(tuple[bytes, bytes], popped)
        return queue.decode(), raw

    def _settle(self, results: list[Any]) -> None:
        """Judge each pending write by its answers. A follow-up (a dead letter for a reply
        key of the wrong type) goes to the event loop: this connection is in a BLPOP."""
        written, self._pending = self._pending, []
        for write in written:
            mine, results = results[: len(write.commands)], results[len(write.commands) :]
            follow_up = self.worker.handling.written(write.queue, write.outcome, mine)
            if follow_up is not None:
                self.worker.finish_on_loop(write.queue, write.raw, follow_up)

    def _serve(self, queue: str, raw: bytes) -> None:
        self.busy = True
        try:
            outcome = self._outcome(queue, raw)
            self._add_write(queue, raw, outcome)
        except Exception:  # The last line of defence: log it, keep serving.
            logger.exception("unexpected error handling a message from %s", queue)
        finally:
            self.busy = False

    def _outcome(self, queue: str, raw: bytes) -> Outcome:
        worker = self.worker
        screened = worker.handling.screen(queue, raw)
        if isinstance(screened, Outcome):
            return screened
        service = worker.by_queue[queue]
        if service.dispatches_in_thread(screened.payload):
            response = worker.dispatch_in_this_thread(service, screened)
        else:
            response = worker.dispatch_on_loop(service, screened)
        return worker.handling.answer(queue, screened, response)

    def _add_write(self, queue: str, raw: bytes, outcome: Outcome) -> None:
        commands = self.worker.handling.commands(queue, raw, outcome)
        if commands:
            write = PendingWrite(queue, raw, outcome, commands, give_up_time(outcome.deadline))
            self._pending.append(write)

    def _drop_expired_writes(self) -> None:
        """After a lost connection: keep the writes worth retrying, log the others."""
        now = time.time()
        for write in self._pending:
            if write.give_up_at < now:
                logger.error(
                    "could not write the outcome of a request to %s: Redis unreachable",
                    write.queue,
                )
        self._pending = [write for write in self._pending if write.give_up_at >= now]

    def _flush(self, connection: redis.Connection) -> None:
        """At stop: write what is pending, retrying through an outage as long as allowed."""
        while self._pending:
            writes = [command for write in self._pending for command in write.commands]
            try:
                send_commands_sync(connection, writes)
                self._settle(read_responses_sync(connection, len(writes), WRITE_READ_TIMEOUT))
            except REDIS_ERRORS as exc:
                self._drop_expired_writes()
                if self._pending:
                    logger.debug("retrying %d write(s) at stop: %s", len(self._pending), exc)
                    time.sleep(0.1)
