"""The worker: pop a request, dispatch it, push the reply to its reply key.

Up to ``concurrency`` requests are in flight. A worker whose services have plain
functions receives on that many threads ("lanes", see ``lanes.py``), each serving one
request at a time without leaving its thread. Otherwise (services of ``async def``
methods only, or reliable queues) the event loop receives, taking a request only when
a slot is free, so a busy worker leaves work on the queue for its peers; there,
``async def`` handlers run on the loop and plain functions in a thread pool. Bad
messages get an error reply or a dead-letter entry and one log line; nothing kills
the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any, cast

import redis
import redis.asyncio
import redis.retry
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .. import protocol
from ..connection import (
    REDIS_ERRORS,
    Reconnector,
    async_pool,
    default_url,
    redact_url,
    sleep_unless_set,
    sync_pool,
)
from ..service import Service
from ..threads import HandlerThreads
from .handling import Handling, Outcome, WorkerStats, give_up_time
from .lanes import Lanes
from .loop import LoopReceivers
from .reliable import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_MAX_DELIVERIES, Reliability
from .writer import Writer

logger = logging.getLogger("rpc_redis.worker")

DEFAULT_CONCURRENCY = 8
DEFAULT_PREFETCH = 8
DEFAULT_DEAD_LETTER_LIMIT = 10_000
# How long one BLPOP blocks before the loop goes round again.
BLOCK_SECONDS = 5.0
# Bound on the worker's occasional commands (PING, heartbeats, CLIENT UNBLOCK).
ADMIN_TIMEOUT = 10.0

__all__ = ["Worker", "WorkerStats", "WorkerThread", "run_worker"]


class Worker:
    """Serves one or more :class:`Service` objects from their Redis lists."""

    def __init__(
        self,
        services: Service | Sequence[Service],
        redis_url: str | None = None,
        *,
        queue: str | None = None,
        prefix: str = protocol.DEFAULT_PREFIX,
        concurrency: int = DEFAULT_CONCURRENCY,
        reply_ttl: float = protocol.DEFAULT_REPLY_TTL,
        max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES,
        dead_letter_limit: int = DEFAULT_DEAD_LETTER_LIMIT,
        debug: bool = False,
        time_limit: float | None = None,
        reliable: bool = False,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        block_seconds: float = BLOCK_SECONDS,
        receive_in_threads: bool | None = None,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> None:
        """``receive_in_threads``: serve from ``concurrency`` threads with a connection
        each (the fastest for plain functions), or from the event loop on one
        connection; by default, threads when a service has plain functions, unless a
        queue is reliable. ``prefetch``: in threads, how many requests waiting on the
        queue each thread may take ahead, for the first thread free (see ``lanes.py``);
        0 takes none."""
        services = [services] if isinstance(services, Service) else list(services)
        if not services:
            raise ValueError("a worker needs at least one service")
        if queue is not None and len(services) != 1:
            raise ValueError("a queue name can be given only when serving one service")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if prefetch < 0:
            raise ValueError("prefetch must be 0 or more")
        if reply_ttl <= 0:
            raise ValueError("reply_ttl must be a positive number of seconds")
        if time_limit is not None and time_limit <= 0:
            raise ValueError("time_limit must be a positive number of seconds")
        self.services = services
        self.redis_url = redis_url or default_url()
        self.prefix = prefix
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.reply_ttl_ms = int(reply_ttl * 1000)
        self.max_message_bytes = max_message_bytes
        self.dead_letter_limit = dead_letter_limit
        self.debug = debug
        self.time_limit = time_limit
        self.block_seconds = block_seconds
        self.name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.by_queue = {queue or service.queue_key(prefix): service for service in services}
        # Reliable queues: requests move into an in-progress list until answered.
        self.reliable_queues = {
            queue: service.name
            for queue, service in self.by_queue.items()
            if reliable or service.reliable
        }
        self.max_deliveries = max_deliveries
        self.heartbeat_interval = heartbeat_interval
        self.handling = Handling(
            self.by_queue,
            prefix=prefix,
            max_message_bytes=max_message_bytes,
            reply_ttl_ms=self.reply_ttl_ms,
            dead_letter_limit=dead_letter_limit,
        )
        self.stats: WorkerStats = self.handling.stats
        # Lanes serve plain functions on their own threads; reliable queues (BLMOVE into
        # in-progress lists, acknowledged in transactions) are received on the loop.
        if receive_in_threads and self.reliable_queues:
            raise ValueError("reliable queues are received on the event loop, not in threads")
        if receive_in_threads is None:
            receive_in_threads = not self.reliable_queues and any(
                service.has_plain_functions for service in services
            )
        self.uses_lanes = receive_in_threads
        self.handler_threads = HandlerThreads(concurrency)
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self._plain_queues = [q for q in self.by_queue if q not in self.reliable_queues]
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._unblocker: asyncio.Future[None] | None = None
        self._lanes: Lanes | None = None
        self._refused = ""  # the last refusal to pop logged
        self._refused_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Worker({protocol.summarize(self.by_queue)}, concurrency={self.concurrency})"

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until :meth:`stop`; then finish the requests in flight and return."""
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        self._receiving_done = asyncio.Event()
        if self._stopping:
            self._stop_requested.set()
        self._redis = redis.asyncio.Redis.from_pool(
            async_pool(
                self.redis_url,
                max_connections=self.concurrency + 4,
                # No socket timeout: it would wrap every send in a task (redis-py);
                # every read here passes its own timeout instead.
                socket_timeout=None,
            )
        )
        self._reconnector = Reconnector(
            self._redis, self.redis_url, self._stop_requested, ADMIN_TIMEOUT
        )
        self._writer = Writer(self._redis.connection_pool)
        self._reliability = Reliability(
            self._redis,
            self.name,
            self.reliable_queues,
            prefix=self.prefix,
            heartbeat_interval=self.heartbeat_interval,
            max_deliveries=self.max_deliveries,
            dead_letter_limit=self.dead_letter_limit,
        )
        # Receiving connections are named so that stop() can unblock their BLPOPs at once.
        self._receiver_name = f"rpc-worker-{self.name}"
        upkeep: asyncio.Task[None] | None = None
        try:
            if await self.wait_for_redis():
                if self.reliable_queues:
                    await asyncio.wait_for(self._reliability.beat(), ADMIN_TIMEOUT)
                    upkeep = asyncio.create_task(self._reliability.keep_up(ADMIN_TIMEOUT))
                await self._receive()
        finally:
            self._receiving_done.set()
            if self._unblocker is not None:
                await self._unblocker
            await self._drain()
            if upkeep is not None:
                upkeep.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await upkeep
                with contextlib.suppress(*REDIS_ERRORS, asyncio.TimeoutError):
                    await asyncio.wait_for(self._reliability.retire(), ADMIN_TIMEOUT)
            await self._redis.aclose()
            self.handler_threads.shutdown()
            self.stopped.set()

    async def _receive(self) -> None:
        """Receive until stopped: in lanes (threads), or on the event loop. The startup
        line and :attr:`ready` wait for the receiving connections to be up, so that
        "ready" means receiving (a failed one meets its outage in its receive loop)."""
        receivers: Lanes | LoopReceivers
        if self.uses_lanes:
            pool = self._redis.connection_pool
            receivers = Lanes(self, self._plain_queues, self.concurrency, self.prefetch, pool)
            self._lanes = receivers
        else:
            # BLMOVE takes one source list: a receiver for each reliable queue.
            groups = [[queue] for queue in self.reliable_queues]
            groups += [self._plain_queues] if self._plain_queues else []
            receivers = LoopReceivers(self, groups, self._writer, self._reliability)
        receiving = asyncio.create_task(receivers.run())
        connected = asyncio.create_task(receivers.connected.wait())
        try:
            await asyncio.wait({receiving, connected}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            receiving.cancel()  # as it would be if awaited
            raise
        finally:
            connected.cancel()
        if receivers.connected.is_set():
            logger.info("%s", self.describe())
            self.ready.set()
        await receiving

    def receiving_connection(self) -> redis.asyncio.Connection:
        """A connection of its own, not yet connected: its first BLPOP connects it, inside
        the receive loop, which rides out an unreachable Redis."""
        connection: redis.asyncio.Connection = async_pool(
            self.redis_url,
            max_connections=1,
            # No socket timeout: it would wrap every send in a task (redis-py); every
            # read here passes its own timeout instead.
            socket_timeout=None,
            client_name=self._receiver_name,
            retry=Retry(NoBackoff(), 0),
        ).make_connection()  # type: ignore[no-untyped-call]
        return connection

    def receiving_connection_sync(self) -> redis.Connection:
        """A lane's connection: the sync twin of :meth:`receiving_connection`."""
        connection = sync_pool(
            self.redis_url,
            max_connections=1,
            socket_timeout=None,
            client_name=self._receiver_name,
            retry=redis.retry.Retry(NoBackoff(), 0),
        ).make_connection()
        return cast(redis.Connection, connection)

    def is_reliable(self, queue: str) -> bool:
        return queue in self.reliable_queues

    def note_refusal(self, queues: list[str], error: Exception | None) -> None:
        """Log Redis's refusal to pop (a queue key holding a string...) once while it
        lasts, whichever receiver meets it; None: popping works again."""
        message = "" if error is None else str(error)
        with self._refused_lock:  # lanes meet it together: one of them logs
            first = message and message != self._refused
            self._refused = message
        if first:
            logger.error("Redis refused to pop from %s: %s; retrying", queues, message)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Stop taking requests; in-flight ones finish. Safe from any thread or signal handler."""
        self._stopping = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._begin_stop)

    def _begin_stop(self) -> None:
        if self._stop_requested is not None and not self._stop_requested.is_set():
            self._stop_requested.set()
            in_flight = len(self._in_flight) + (self._lanes.busy if self._lanes else 0)
            logger.info("stopping: finishing %d request(s) in flight", in_flight)
            self._unblocker = asyncio.ensure_future(self._unblock_receiver())

    def describe(self) -> str:
        """The startup line: what is served, from where, how."""
        served = "; ".join(
            f"{service.name} [{protocol.summarize(sorted(service.functions))}] from {queue}"
            for queue, service in self.by_queue.items()
        )
        reliable = f", reliable: {', '.join(self.reliable_queues)}" if self.reliable_queues else ""
        where = f"in threads, prefetch {self.prefetch}" if self.uses_lanes else "on the event loop"
        return (
            f"rpc-worker serving {served} on {redact_url(self.redis_url)} "
            f"(concurrency {self.concurrency} {where}, pid {os.getpid()}{reliable})"
        )

    async def _unblock_receiver(self) -> None:
        """CLIENT UNBLOCK the receiving BLPOP until the receive loop has exited.

        An unblocked BLPOP returns nil, so no popped message is ever abandoned; repeating
        covers a BLPOP sent just after the loop last checked for a stop.
        """
        while not self._receiving_done.is_set():
            try:
                await asyncio.wait_for(self._unblock_receivers_once(), ADMIN_TIMEOUT)
            except (*REDIS_ERRORS, asyncio.TimeoutError):
                pass  # The BLPOP returns by itself within block_seconds.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._receiving_done.wait(), 0.05)

    async def _unblock_receivers_once(self) -> None:
        for client in await self._redis.client_list():
            if client.get("name") == self._receiver_name:
                await self._redis.client_unblock(int(client["id"]))

    async def _drain(self) -> None:
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    # -- for receivers ---------------------------------------------------------------

    async def wait_for_redis(self, first_error: BaseException | None = None) -> bool:
        """Wait out a lost Redis (one log line per outage); False if asked to stop first."""
        return await self._reconnector.wait(first_error)

    async def sleep_unless_stopped(self, seconds: float) -> bool:
        """Sleep; True if a stop was requested meanwhile."""
        assert self._stop_requested is not None
        return await sleep_unless_set(self._stop_requested, seconds)

    # -- for lanes, from their threads ---------------------------------------------------

    def wait_for_redis_from_thread(self, first_error: BaseException) -> bool:
        """:meth:`wait_for_redis` from a lane: one log line per outage, shared with all."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(
            self.wait_for_redis(first_error), self._loop
        ).result()

    def sleep_unless_stopped_from_thread(self, seconds: float) -> bool:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(
            self.sleep_unless_stopped(seconds), self._loop
        ).result()

    def finish_on_loop(self, queue: str, raw: bytes, outcome: Outcome) -> None:
        """:meth:`finish_soon`, from another thread."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.finish_soon, queue, raw, outcome)

    def dispatch_on_loop(self, service: Service, message: protocol.Incoming) -> Any:
        """Dispatch a message on the event loop (async methods, batches) and wait for it."""
        assert self._loop is not None
        dispatching = self._dispatch(service, message)
        return asyncio.run_coroutine_threadsafe(dispatching, self._loop).result()

    def dispatch_in_this_thread(self, service: Service, message: protocol.Incoming) -> Any:
        """Dispatch one request to a plain function right here, in a lane's thread."""
        return service.dispatch_in_thread(message.payload, **self._dispatch_options(message))

    async def _dispatch(self, service: Service, message: protocol.Incoming) -> Any:
        return await service.dispatch(message.payload, **self._dispatch_options(message))

    def _dispatch_options(self, message: protocol.Incoming) -> dict[str, Any]:
        return {
            "deadline": message.deadline,
            "debug": self.debug,
            "time_limit": self.time_limit,
            "threads": self.handler_threads,
        }

    # -- handling ----------------------------------------------------------------------

    def handle_soon(self, queue: str, raw: bytes) -> asyncio.Task[None]:
        """Handle a message in a task of its own, which the worker waits for at stop."""
        return self._start(self.handle(queue, raw))

    def _start(self, handling: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task the worker waits for before it stops."""
        task = asyncio.create_task(handling)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        return task

    async def handle(self, queue: str, raw: bytes) -> None:
        """Handle one message, from its screening to its outcome written."""
        try:
            outcome = await self._outcome(queue, raw)
            await self._finish(queue, raw, outcome)
        except Exception:  # The last line of defence: log it, keep serving.
            logger.exception("unexpected error handling a message from %s", queue)

    async def _outcome(self, queue: str, raw: bytes) -> Outcome:
        """Decide what a message earns: a reply, a dead letter, or nothing."""
        screened = self.handling.screen(queue, raw)
        if isinstance(screened, Outcome):
            return screened
        response = await self._dispatch(self.by_queue[queue], screened)
        return self.handling.answer(queue, screened, response)

    @property
    def busy_handler_threads(self) -> int:
        """Threads running a plain-function handler now: after a stop, those past a limit."""
        return self.handler_threads.busy

    # -- writing -----------------------------------------------------------------------

    def finish_soon(self, queue: str, raw: bytes, outcome: Outcome) -> None:
        """Write an outcome from the event loop, without waiting for it."""
        self._start(self._finish(queue, raw, outcome))

    async def _finish(self, queue: str, raw: bytes, outcome: Outcome) -> None:
        """Write the outcome in one round trip; for a reliable queue, in one transaction
        with the removal of the request from this worker's in-progress list.

        A reply key gets its expiry with the reply, so a reply nobody reads vanishes.
        """
        in_progress = self._reliability.in_progress_key(queue) if self.is_reliable(queue) else None
        commands = self.handling.commands(queue, raw, outcome, in_progress)
        if not commands:
            return
        give_up_at = give_up_time(outcome.deadline)
        delay = 0.05
        while True:
            try:
                if in_progress is None:
                    results = await self._writer.write_with_others(commands)
                else:
                    results = await self._writer.write_transaction(commands)
                break
            except REDIS_ERRORS as exc:
                if time.time() + delay > give_up_at:
                    logger.error("could not write the outcome of a request to %s: %s", queue, exc)
                    return
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 1.0)
        follow_up = self.handling.written(queue, outcome, results)
        if follow_up is not None:  # the reply key holds another type: keep the request
            await self._finish(queue, raw, follow_up)


def run_worker(worker: Worker) -> None:
    """Run a worker on a fresh event loop until it is stopped."""
    asyncio.run(worker.run())


class WorkerThread:
    """A worker on its own thread and event loop: for tests and embedding in sync apps.

    >>> with WorkerThread(Worker(service, url)) as worker:
    ...     client.proxy("calculator").add(1, 2)
    """

    def __init__(self, worker: Worker, start_timeout: float = 10.0) -> None:
        self.worker = worker
        self.start_timeout = start_timeout
        self._thread = threading.Thread(target=run_worker, args=(worker,), daemon=True)

    def start(self) -> WorkerThread:
        self._thread.start()
        if not self.worker.ready.wait(self.start_timeout):
            self.stop()
            raise RuntimeError(f"worker not ready within {self.start_timeout}s")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.worker.stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"worker did not stop within {timeout}s")

    def __enter__(self) -> Worker:
        self.start()
        return self.worker

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
