"""Handler threads: where a plain function runs when it must not run where it was called.

From the event loop, every plain function goes to a thread, so the loop keeps serving.
From a receiving thread, only one with a time limit does: the receiving thread waits
for it no longer than the limit. Either way a function past its limit cannot be
stopped; it keeps its thread until it returns, and the pool keeps spare threads so
that the slot it freed stays usable.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

from .bounds import TimeLimitReached

HANDLER_THREAD_PREFIX = "rpc-handler"


class HandlerThreads:
    """A pool of threads for plain functions, counting those still running."""

    def __init__(self, slots: int) -> None:
        # Twice the slots: a function past its time limit keeps its thread.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            2 * slots, thread_name_prefix=HANDLER_THREAD_PREFIX
        )
        self._lock = threading.Lock()
        self._busy = 0

    @property
    def busy(self) -> int:
        """Threads running a handler now: after a stop, those past a time limit."""
        return self._busy

    async def run(self, func: Callable[[], Any]) -> Any:
        """Run a plain function off the event loop and await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._tracked, func)

    def run_within(self, func: Callable[[], Any], limit: float) -> Any:
        """Run a plain function, waiting for it at most ``limit`` seconds."""
        future = self._executor.submit(self._tracked, func)
        try:
            return future.result(timeout=limit)
        except concurrent.futures.TimeoutError:
            if future.done():  # finished just now, or raised a TimeoutError of its own
                return future.result()
            raise TimeLimitReached from None

    def shutdown(self) -> None:
        """Let idle threads go; wait for busy ones unless some are past their limit."""
        self._executor.shutdown(wait=not self._busy)

    def _tracked(self, func: Callable[[], Any]) -> Any:
        with self._lock:
            self._busy += 1
        try:
            return func()
        finally:
            with self._lock:
                self._busy -= 1
