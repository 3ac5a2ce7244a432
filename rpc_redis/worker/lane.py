"""One lane: a receiving thread that pops, serves and replies without the event loop.

See ``lanes.py`` for why lanes exist, and for the keeper and the overseer that watch
them from the event loop. A lane is handed what it needs (``Serving``, ``Outages``,
the requests taken ahead, a way to its connection); it never reaches back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from ..connection import REDIS_ERRORS, read_responses_sync, send_commands_sync
from ..printable import printable_exception
from .ahead import TakenAhead
from .handling import Outcome
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

# A lane keeps finished replies to send together only while its calls take less than
# this and the oldest reply has waited less than this.
HOLD_SECONDS = 0.001


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """An outcome's commands, waiting to go out in front of the lane's next BLPOP."""

    queue: str
    raw: bytes  # the request, for a dead letter that may follow
    outcome: Outcome
    commands: list[Command]
    retry: WriteRetry
    finished_at: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class Abandoned:
    """What a lane left behind when it was abandoned: the request it was serving (if
    any) and the replies it kept, now the abandoner's to write."""

    serving: tuple[str, bytes] | None
    kept: list[PendingWrite]


class Lane:
    """One receiving thread of a worker: see the module's docstring."""

    def __init__(
        self,
        serving: Serving,
        outages: Outages,
        ahead: TakenAhead,
        queues: list[str],
        *,
        block_seconds: float,
        new_connection: Callable[[], redis.Connection],
        on_connected: Callable[[], None],
    ) -> None:
        """``on_connected``: called once the lane's connection is up, or failed to be."""
        self.serving = serving
        self.outages = outages
        self.ahead = ahead
        self.block_seconds = block_seconds
        self.queues = list(queues)
        self._new_connection = new_connection
        self._on_connected = on_connected
        self.serving_since: float | None = None  # time.monotonic(), while in a call
        self.serving_request: tuple[str, bytes] | None = None  # (queue, raw), meanwhile
        # Abandoned (its call outlived its deadline, or the worker's drain): the lane
        # ends once its call returns, and writes nothing for it. Under _lock.
        self.abandoned = False
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

    def abandon(self) -> Abandoned:
        """Give the lane up: whatever its call does from now on is not written, and the
        lane ends when it returns. Its kept replies are handed over."""
        with self._lock:
            self.abandoned = True
            kept, self._pending = self._pending, []
            return Abandoned(self.serving_request if self.busy else None, kept)

    def run(self) -> None:
        """Serve until the worker stops (or the lane is abandoned), then write what is
        still pending (an abandoned lane: what it sent and has not read)."""
        connection = self._new_connection()
        try:
            with contextlib.suppress(*REDIS_ERRORS):  # the first BLPOP meets the outage
                connection.connect()  # type: ignore[no-untyped-call]
            self._on_connected()
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
            return not self.abandoned
        self.serving_since = None
        if self.outages.stop_requested or self.abandoned:
            return False
        try:
            popped = self._pop(connection)
        except Exception as exc:
            return self._after_failure(exc)
        self.outages.note_refusal(self.queues, None)
        if popped is not None:
            self.serving_since = time.monotonic()
            self._serve(*popped)
        return not self.abandoned

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
        """Call and answer; ``serving_since`` is set by the caller. The outcome of a
        call the lane was abandoned in is dropped: its caller's deadline has passed."""
        write: PendingWrite | None = None
        started = time.monotonic()
        self.serving_request = (queue, raw)
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
                if write is not None and not self.abandoned:
                    self._pending.append(write)
                self.serving_since = None
                self.serving_request = None
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
