"""Riding out what stops a worker from receiving: a lost Redis, a refused pop, a stop.

The receivers (threads and event-loop tasks alike) are handed one :class:`Outages`;
it waits out an outage once for all of them, with one log line, and tells them when
the worker is stopping or must stop (a configuration error).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable

from ..connection import AsyncRoutes
from ..errors import RedisFailure, classify_redis_error, redis_error
from .receiving import AfterFailure, after_receive_failure

logger = logging.getLogger("rpc_redis.worker")

RECONNECT_BACKOFF_CAP = 5.0


class Stopping:
    """A worker's stop: requested from any thread or a signal handler, waited on, on
    the event loop; ``fatal`` holds the configuration error that forced it, if any.
    Once requested, the requests in flight have ``drain_timeout`` seconds to finish."""

    def __init__(self, drain_timeout: float) -> None:
        self.drain_timeout = drain_timeout
        self.requested = False
        self.requested_at: float | None = None  # time.monotonic()
        self.fatal: BaseException | None = None
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the loop the worker runs on (a stop asked for earlier holds)."""
        self._loop = loop
        self._event = asyncio.Event()
        if self.requested:
            self._event.set()

    @property
    def event(self) -> asyncio.Event:
        assert self._event is not None, "bind() first"
        return self._event

    def request(self) -> bool:
        """Ask for a stop; safe from any thread. True for the first request."""
        first = not self.requested
        if first:
            self.requested_at = time.monotonic()
        self.requested = True
        loop = self._loop
        if first and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.event.set)
        return first

    def drain_left(self) -> float | None:
        """Seconds left for the requests in flight to finish; None until a stop."""
        if self.requested_at is None:
            return None
        return max(0.0, self.requested_at + self.drain_timeout - time.monotonic())

    def fail(self, error: BaseException) -> None:
        """Stop because retrying cannot help; the worker's run raises ``error``."""
        if self.fatal is None:
            self.fatal = error
        self.request()


class Outages:
    """Waits out a lost Redis for every receiver: pings backing off with jitter until
    Redis answers or a stop is requested, one log line per outage; notes refusals. On a
    cluster, the node pinged is the one serving the receiver's queues, as the cluster
    says after each attempt (a failover replaces it)."""

    def __init__(
        self,
        routes: AsyncRoutes,
        where: str,
        stopping: Stopping,
        ping_timeout: float,
        loop: asyncio.AbstractEventLoop,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self.routes = routes
        self.on_reconnect = on_reconnect  # told once per outage that ends (metrics)
        self.url = where  # Redis, named without passwords
        self.stopping = stopping
        self.ping_timeout = ping_timeout
        self.loop = loop
        self._lock = asyncio.Lock()  # several receivers, one outage, one log line
        self._refused = ""  # the last refusal to pop logged
        self._refused_lock = threading.Lock()

    @property
    def stop_requested(self) -> bool:
        return self.stopping.requested

    async def wait(self, first_error: BaseException | None = None, key: str | None = None) -> bool:
        """True once Redis (the node serving ``key``) answers; False if a stop is
        requested first, or a configuration error makes the worker stop."""
        async with self._lock:
            return await self._reconnect(first_error, key)

    async def _reconnect(self, first_error: BaseException | None, key: str | None) -> bool:
        delay = 0.1
        error = await self._ping(key)
        if error is None:
            return True  # never lost, or another receiver already reconnected
        if self.stopping.fatal is not None:
            return False
        error = first_error if first_error is not None else error
        logger.warning(
            "cannot reach Redis at %s (%s); retrying with backoff", self.url, error or "timeout"
        )
        while not await self.pause(delay * random.uniform(0.5, 1.5)):
            delay = min(delay * 2, RECONNECT_BACKOFF_CAP)
            if await self._ping(key) is None:
                if self.on_reconnect is not None:
                    self.on_reconnect()
                logger.info("connected to Redis at %s", self.url)
                return True
        return False

    async def _ping(self, key: str | None) -> BaseException | None:
        """None if Redis answers; else the error. A configuration error stops the worker."""
        try:
            await asyncio.wait_for(self.routes.probe(key, self.ping_timeout), self.ping_timeout)
            return None
        except Exception as exc:
            failure = classify_redis_error(exc)
            if failure is None:
                raise
            if failure is RedisFailure.CONFIGURATION:
                self.fail(exc)
            return exc

    def fail(self, error: BaseException) -> None:
        """A configuration error: the worker stops, and its run raises it mapped (one
        line and exit 2 from rpc-worker). Only the first is kept."""
        if self.stopping.fatal is None:
            self.stopping.fail(redis_error(error, self.url, "the worker"))

    async def pause(self, seconds: float) -> bool:
        """Sleep, waking early if a stop is requested; True if it was."""
        try:
            await asyncio.wait_for(self.stopping.event.wait(), seconds)
        except asyncio.TimeoutError:
            return self.stopping.requested
        return True

    def ride_out(self, error: BaseException, queues: list[str]) -> AfterFailure:
        """Take note of a failed pop, as the shared rules say, and tell the receiver what
        to wait for: a stop (a configuration error), a pause (a refusal), or Redis."""
        action = after_receive_failure(error)
        if action is None:
            raise error
        if action is AfterFailure.STOP:
            self.fail(error)
        elif action is AfterFailure.PAUSE:
            self.note_refusal(queues, error)
        return action

    def note_refusal(self, queues: list[str], error: BaseException | None) -> None:
        """Log Redis's refusal to pop (a queue key holding a string...) once while it
        lasts, whichever receiver meets it; None: popping works again."""
        if error is None and not self._refused:
            return  # the usual case, every read: nothing refused, nothing to take back
        message = "" if error is None else str(error)
        with self._refused_lock:  # lanes meet it together: one of them logs
            first = message and message != self._refused
            self._refused = message
        if first:
            logger.error("Redis refused to pop from %s: %s; retrying", queues, message)

    # -- from a receiving thread ----------------------------------------------------------

    def wait_from_thread(self, first_error: BaseException, key: str | None = None) -> bool:
        waiting = self.wait(first_error, key)
        return asyncio.run_coroutine_threadsafe(waiting, self.loop).result()

    def pause_from_thread(self, seconds: float) -> bool:
        return asyncio.run_coroutine_threadsafe(self.pause(seconds), self.loop).result()
