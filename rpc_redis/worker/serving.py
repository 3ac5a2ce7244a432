"""Serving a message: from its screening to its outcome written, on the event loop or
from a receiving thread. The receivers are handed a :class:`Serving`; it is all they
know of the worker's services, rules and writing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from .. import protocol
from ..connection import REDIS_ERRORS
from ..printable import printable, printable_exception
from .dispatch import Dispatcher
from .handling import Handling, Outcome
from .receiving import Command, WriteRetry
from .reliable import Reliability
from .writer import Writer

logger = logging.getLogger("rpc_redis.worker")


class Serving:
    """A worker's services behind its rules: what receivers hand each message to."""

    def __init__(
        self,
        handling: Handling,
        dispatchers: dict[str, Dispatcher],
        writer: Writer,
        reliability: Reliability,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.handling = handling
        self.dispatchers = dispatchers  # queue -> the dispatcher of its service
        self.writer = writer
        self.reliability = reliability
        self.loop = loop
        self._in_flight: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Messages being handled or written on the event loop."""
        return len(self._in_flight)

    # -- on the event loop -----------------------------------------------------------

    def handle_soon(self, queue: str, raw: bytes) -> asyncio.Task[None]:
        """Handle a message in a task of its own, which :meth:`drain` waits for."""
        return self._start(self.handle(queue, raw))

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
            response = await self._dispatch(queue, screened)
            return self.handling.answer(queue, screened, response)
        except Exception as exc:
            return self.handling.fault(queue, raw, exc)

    async def _dispatch(self, queue: str, message: protocol.Incoming) -> Any:
        dispatcher = self.dispatchers[queue]
        return await dispatcher.dispatch(message.payload, message.deadline, message.meta)

    def finish_soon(self, queue: str, raw: bytes, outcome: Outcome) -> None:
        """Write an outcome, without waiting for it."""
        self._start(self.finish(queue, raw, outcome))

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
        results = await self._write(queue, commands, outcome, transaction=transaction)
        if results is None:
            return
        follow_up = self.handling.written(queue, outcome, results)
        if follow_up is not None:  # a refused reply's dead letter, or its acknowledgement
            await self.finish(queue, raw, follow_up)

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

    async def drain(self) -> None:
        """Wait for every message being handled or written on the loop."""
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    def _start(self, handling: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(handling)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        return task

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
        """:meth:`finish_soon`, from a receiving thread."""
        self.loop.call_soon_threadsafe(self.finish_soon, queue, raw, outcome)
