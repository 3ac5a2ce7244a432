"""One lane: a receiving thread that pops, serves and replies without the event loop.

See ``lanes.py`` for why lanes exist, and for the keeper and the overseer that watch
them from the event loop. A lane is handed what it needs (``Serving``, ``Outages``,
the requests taken ahead, the receiving connections); it never reaches back. On a
cluster its connection goes to the node serving its queues' hash slot, and moves when
a redirection or a failover says so.
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

from ..connection import (
    REDIS_ERRORS,
    Redirect,
    command_key,
    read_responses_sync,
    redirect_of,
    send_commands_sync,
)
from ..connection.routes import with_asking, without_asking
from ..printable import printable_exception
from .ahead import TakenAhead
from .connections import ReceivingConnections
from .elsewhere import WritesElsewhere
from .handling import Outcome
from .outage import Outages
from .receiving import (
    BUSY_PAUSE_SECONDS,
    READ_GRACE_SECONDS,
    REFUSAL_PAUSE_SECONDS,
    AfterFailure,
    Command,
    TakenThenFailed,
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


def _redirect(error: BaseException) -> Redirect:
    redirect = redirect_of(error)
    assert redirect is not None
    return redirect


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
        connections: ReceivingConnections,
        on_connected: Callable[[], None],
    ) -> None:
        """``queues``: those of one hash slot on a cluster; ``on_connected``: called once
        the lane's connection is up, or failed to be."""
        self.serving = serving
        self.outages = outages
        self.ahead = ahead
        self.block_seconds = block_seconds
        self.group = queues  # as given, for a lane that takes this one's place
        self.queues = list(queues)
        self._connections = connections
        self._on_connected = on_connected
        self.connection: redis.Connection | None = None  # to the node serving the queues
        self.asking = False  # that node imports their slot: ask for each command (ASK)
        self._elsewhere = WritesElsewhere(connections)  # to the other nodes
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
        self.connection = self._connections.new_sync(self.queues[0])
        try:
            with contextlib.suppress(*REDIS_ERRORS):  # the first BLPOP meets the outage
                self.connection.connect()  # type: ignore[no-untyped-call]
            self._on_connected()
            while self._serve_next(self.connection):
                pass
            self._flush(self.connection)
        finally:
            self.connection.disconnect()  # type: ignore[no-untyped-call]
            self._elsewhere.close()

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
        except TakenThenFailed as partial:  # the request first, then the error
            self.serving_since = time.monotonic()
            self._serve(partial.queue, partial.requests[0])
            return not self.abandoned and self._after_failure(partial.error)
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
        if action is AfterFailure.REDIRECT:
            redirect = _redirect(error)
            self._move(self._connections.following_sync(redirect, self.queues[0]))
            self.asking = redirect.asking
            return True
        if action is AfterFailure.RETRY_SOON:
            return not self.outages.pause_from_thread(BUSY_PAUSE_SECONDS)
        if action is AfterFailure.PAUSE:
            return not self.outages.pause_from_thread(REFUSAL_PAUSE_SECONDS)
        self._after_lost_connection()
        if not self.outages.wait_from_thread(error, self.queues[0]):
            return False
        self._rehome()
        return True

    def _move(self, connection: redis.Connection) -> None:
        """Receive on ``connection`` from now on: writes sent on the old one go again."""
        assert self.connection is not None
        self._after_lost_connection()
        self.connection.disconnect()  # type: ignore[no-untyped-call]
        self.connection = connection

    def _rehome(self) -> None:
        """After an outage: to the node serving the queues now, if another (a failover)."""
        assert self.connection is not None
        owner = self._connections.owner(self.queues[0])
        if owner is not None and owner != (self.connection.host, self.connection.port):
            self._move(self._connections.new_sync(self.queues[0]))
            self.asking = False

    def _pop(self, connection: redis.Connection) -> tuple[str, bytes] | None:
        """Send the pending writes, a BLPOP and an LPOP of requests waiting behind it, in
        one write; settle the writes as soon as their answers come, then wait."""
        rotate(self.queues)
        room = self.ahead.reserve()
        received = None
        try:
            commands = receive_commands(self.queues, self.block_seconds, room)
            asking = [self.asking] * len(commands) if self.asking else None
            sent = with_asking(commands, asking) if asking else commands
            send_commands_sync(connection, [*self._sending(), *sent])
            self._settle(read_responses_sync(connection, self._unread(), WRITE_READ_TIMEOUT))
            responses = read_responses_sync(
                connection, len(sent), self.block_seconds + READ_GRACE_SECONDS
            )
            if asking:
                responses = without_asking(responses, asking)
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
            if any(redirect_of(result) for result in mine):  # the slot moved: routed
                self.serving.finish_from_thread(write.queue, write.raw, write.outcome)
                continue
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
            if commands and not self.serving.writer.routes.same_slot(commands, queue):
                if not self.abandoned:
                    self._write_elsewhere(queue, raw, outcome, commands)
            elif commands:
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

    def _write_elsewhere(
        self, queue: str, raw: bytes, outcome: Outcome, commands: list[Command]
    ) -> None:
        """On a cluster, an outcome for another node than this lane's (an AsyncClient's
        reply key): written from here at once, else by the event loop's writer."""
        key = command_key(commands[0])
        results = None
        if key is not None and self.serving.writer.routes.same_slot(commands, key):
            results = self._elsewhere.write(key, commands)
        if results is None:
            self.serving.finish_from_thread(queue, raw, outcome)
            return
        follow_up = self.serving.handling.written(queue, outcome, results)
        if follow_up is not None:
            self.serving.finish_from_thread(queue, raw, follow_up)

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
