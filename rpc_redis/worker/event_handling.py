"""Handling an event in the worker, the one way for pub/sub and durable events alike.

An event handler runs as a method does (``dispatch.Handler``): its call current, the
middleware's ``before_call`` and ``after_call`` around it, the time limit, plain
functions on the handler threads, a failure logged in one line. Events take the
worker's slots of their own, ``concurrency`` of them for the subscriber and the
consumers together, so a flood of events cannot starve requests, nor the reverse.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from jsonrpcserver import JsonRpcError
from jsonrpcserver.sentinels import NODATA

from ..context import CallContext
from ..errors import RpcError
from ..service import Method
from .loop import Slots

logger = logging.getLogger("rpc_redis.worker")


@dataclass(frozen=True, slots=True)
class EventHandler:
    """One service's handler for an event source, ready to run (see ``run``)."""

    service: str
    method: Method
    run_handler: Callable[..., Any]  # Dispatcher.event_handler's: (call, data) -> Success

    async def run(self, call: CallContext) -> RpcError | None:
        """Run the handler for an event: None if it returned, else the error its failure
        maps to, said in one log line (by the handler's mapping, for its own exceptions;
        here, for an RpcError it raised or a hook's refusal)."""
        try:
            await self.run_handler(call, *call.params)
        except JsonRpcError as exc:
            data = None if exc.data is NODATA else exc.data
            error = RpcError(exc.message, data, code=exc.code)
            if isinstance(exc.__cause__, RpcError):  # not mapped from another exception
                logger.error(
                    "%s.%s failed on an event from %s: %s",
                    self.service,
                    self.method.name,
                    call.event,
                    error,
                )
            return error
        return None


class EventTasks:
    """The events being handled: each in a task holding one of the events' slots, all
    waited for when the worker stops."""

    def __init__(self, slots: Slots) -> None:
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
