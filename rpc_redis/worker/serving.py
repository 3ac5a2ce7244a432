"""Serving a message: from its screening to its outcome written, on the event loop or
from a receiving thread. The receivers are handed a :class:`Serving`; it is all they
know of the worker's services, rules and writing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from .. import protocol
from ..connection import REDIS_ERRORS
from ..errors import InvalidRequest
from ..events import streams
from ..middleware import run_hooks
from ..printable import printable, printable_exception
from .dispatch import Dispatcher
from .handling import Handling, Outcome
from .receiving import Command, WriteRetry
from .reliable import Reliability
from .streamer import Streaming
from .writer import Writer

logger = logging.getLogger("rpc_redis.worker")

# At the end of a drain, how long writes started just then still get.
LAST_WRITES_SECONDS = 0.2


class Serving:
    """A worker's services behind its rules: what receivers hand each message to."""

    def __init__(
        self,
        handling: Handling,
        dispatchers: dict[str, Dispatcher],
        writer: Writer,
        reliability: Reliability,
        loop: asyncio.AbstractEventLoop,
        streaming: Streaming,
    ) -> None:
        self.handling = handling
        self.dispatchers = dispatchers  # queue -> the dispatcher of its service
        self.writer = writer
        self.reliability = reliability
        self.loop = loop
        self.streaming = streaming
        self._in_flight: dict[asyncio.Task[None], tuple[str, bytes]] = {}  # -> queue, raw

    @property
    def in_flight(self) -> int:
        """Messages being handled or written on the event loop."""
        return len(self._in_flight)

    # -- on the event loop -----------------------------------------------------------

    def handle_soon(self, queue: str, raw: bytes) -> asyncio.Task[None]:
        """Handle a message in a task of its own, which :meth:`drain` waits for."""
        return self._start(queue, raw, self.handle(queue, raw))

    async def handle(self, queue: str, raw: bytes) -> None:
        """Handle one message, from its screening to its outcome written."""
        outcome = await self._outcome(queue, raw)
        try:
            await self.finish(queue, raw, outcome)
        except Exception as exc:  # The last line of defence: log it, keep serving.
            logger.error(
                "unexpected error writing the outcome of a message from %s: %s",
                queue,
                printable_exception(exc),
            )

    async def _outcome(self, queue: str, raw: bytes) -> Outcome:
        """Decide what a message earns: a reply, a dead letter, or nothing; whatever
        goes wrong on the way, the message still earns one (``Handling.fault``)."""
        try:
            screened = self.handling.screen(queue, raw)
            if isinstance(screened, Outcome):
                return screened
            if screened.stream is not None:
                return await self.stream(queue, screened)
            response = await self._dispatch(queue, screened)
            return self.handling.answer(queue, screened, response)
        except Exception as exc:
            return self.handling.fault(queue, raw, exc)

    async def stream(self, queue: str, message: protocol.Incoming) -> Outcome:
        """Serve a stream request: its items and its end are pushed as they come; what
        refuses it (a bad ``stream`` member, a method that does not stream...) is an
        error reply, written as any reply is."""
        window = streams.window_of(message.stream)
        problem = streams.stream_problem(message.payload)
        if isinstance(window, int) and problem is None:
            dispatcher = self.dispatchers[queue]
            opened = await dispatcher.open_stream(message.payload, message.deadline, message.meta)
            if isinstance(opened, dict):
                return self.handling.answer(queue, message, opened)
            assert message.reply_to is not None  # screened: a stream has an id, so a reply key
            if await self.streaming.run(opened, message.reply_to, window):
                run_hooks(self.handling.hooks.after_reply_written, queue)
            return Outcome()
        error = window if not isinstance(window, int) else InvalidRequest(data=problem)
        response = protocol.error_response(protocol.first_request_id(message.payload), error)
        return self.handling.answer(queue, message, response)

    async def _dispatch(self, queue: str, message: protocol.Incoming) -> Any:
        dispatcher = self.dispatchers[queue]
        return await dispatcher.dispatch(message.payload, message.deadline, message.meta)

    def finish_soon(self, queue: str, raw: bytes, outcome: Outcome) -> None:
        """Write an outcome, without waiting for it."""
        self._start(queue, raw, self.finish(queue, raw, outcome))

    async def finish(self, queue: str, raw: bytes, outcome: Outcome) -> None:
        """Write the outcome in one round trip, retried through an outage; for a
        reliable queue, in one transaction with the removal of the request from this
        worker's in-progress list. A reply key gets its expiry with the reply."""
        reliable = self.reliability.is_reliable(queue)
        in_progress = self.reliability.in_progress_key(queue) if reliable else None
        commands = self.handling.commands(queue, raw, outcome, in_progress)
        if not commands:
            return
        # One command (an acknowledgement alone) is atomic by itself; Redis refuses a
        # transaction when out of memory, even one that only removes.
        transaction = reliable and len(commands) > 1
        if transaction and not self.writer.routes.same_slot(commands):
            results = await self._write_then_acknowledge(queue, commands, outcome)
        else:
            results = await self._write(queue, commands, outcome, transaction=transaction)
        if results is None:
            return
        follow_up = self.handling.written(queue, outcome, results)
        if follow_up is not None:  # a refused reply's dead letter, or its acknowledgement
            await self.finish(queue, raw, follow_up)

    async def _write_then_acknowledge(
        self, queue: str, commands: list[Command], outcome: Outcome
    ) -> list[Any] | None:
        """On a cluster, a reply key of the caller's choosing may lie in another slot than
        the in-progress list: the reply goes first, the removal once the reply is in. A
        crash between leaves the request in progress, recovered and answered again: at
        least once, as in one transaction."""
        *writes, acknowledgement = commands
        results = await self._write(queue, writes, outcome, transaction=False)
        if results is None or any(isinstance(result, Exception) for result in results):
            return None if results is None else [*results, None]
        acknowledged = await self._write(queue, [acknowledgement], outcome, transaction=False)
        return None if acknowledged is None else [*results, *acknowledged]

    async def _write(
        self, queue: str, commands: list[Command], outcome: Outcome, *, transaction: bool
    ) -> list[Any] | None:
        retry = WriteRetry(outcome.deadline)
        while True:
            try:
                if transaction:
                    return await self.writer.write_transaction(commands)
                return await self.writer.write_with_others(commands)
            except REDIS_ERRORS as exc:
                delay = retry.next_delay()
                if delay is None:
                    logger.error(
                        "could not write the outcome of a request to %s: %s", queue, printable(exc)
                    )
                    return None
                await asyncio.sleep(delay)

    async def drain(self, seconds: float) -> list[str]:
        """Wait for every message being handled or written on the loop, for at most
        ``seconds`` (and LAST_WRITES_SECONDS, for writes started just now); cancel
        those still in flight then, and return their names, for the worker's log line.
        A reliable one stays in its in-progress list, to be recovered."""
        deadline = time.monotonic() + max(seconds, LAST_WRITES_SECONDS)
        while self._in_flight:
            tasks = set(self._in_flight)
            _, pending = await asyncio.wait(tasks, timeout=deadline - time.monotonic())
            if pending:
                abandoned = [self.handling.describe(*self._in_flight[task]) for task in pending]
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)
                return abandoned
        return []

    def _start(
        self, queue: str, raw: bytes, handling: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(handling)
        self._in_flight[task] = (queue, raw)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)

    # -- from a receiving thread -----------------------------------------------------------

    def outcome_in_thread(self, queue: str, raw: bytes) -> Outcome:
        """Screen, dispatch and answer one message from a receiving thread: a plain
        function runs right here; ``async def`` methods and batches go to the loop, and
        this thread waits for them. Whatever goes wrong, the message earns an outcome."""
        try:
            screened = self.handling.screen(queue, raw)
            if isinstance(screened, Outcome):
                return screened
            dispatcher = self.dispatchers[queue]
            if screened.stream is not None:
                streaming = self.stream(queue, screened)
                return asyncio.run_coroutine_threadsafe(streaming, self.loop).result()
            if dispatcher.dispatches_in_thread(screened.payload):
                response = dispatcher.dispatch_in_thread(
                    screened.payload, screened.deadline, screened.meta
                )
            else:
                dispatching = self._dispatch(queue, screened)
                response = asyncio.run_coroutine_threadsafe(dispatching, self.loop).result()
            return self.handling.answer(queue, screened, response)
        except Exception as exc:
            return self.handling.fault(queue, raw, exc)

    def finish_from_thread(self, queue: str, raw: bytes, outcome: Outcome) -> None:
        """:meth:`finish_soon`, from a receiving thread (one abandoned at a stop may
        come back after the worker is gone: then there is nobody to write it)."""
        try:
            self.loop.call_soon_threadsafe(self.finish_soon, queue, raw, outcome)
        except RuntimeError:  # the event loop is closed
            logger.error("could not write the outcome of a request to %s: stopped", queue)
