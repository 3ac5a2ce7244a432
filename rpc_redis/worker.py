"""The worker loop: pop a request, dispatch it, push the reply to its reply key.

Up to ``concurrency`` requests are in flight: ``async def`` handlers run on the loop,
plain functions in a thread pool. A request is popped only when a slot is free, so
a busy worker leaves work on the queue for its peers. Bad messages get an error
reply or a dead-letter entry and one log line; nothing kills the loop.
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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from . import protocol
from .connection import async_pool, default_url, redact_url
from .errors import INTERNAL_ERROR
from .service import Service

logger = logging.getLogger("rpc_redis.worker")

DEFAULT_CONCURRENCY = 8
DEFAULT_DEAD_LETTER_LIMIT = 10_000
# How long one BLPOP blocks before the loop goes round again.
BLOCK_SECONDS = 5.0
RECONNECT_BACKOFF_CAP = 5.0
HANDLER_THREAD_PREFIX = "rpc-handler"
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


@dataclass
class WorkerStats:
    """Counters a test, a health check or a metrics exporter can read."""

    received: int = 0
    replied: int = 0
    notifications: int = 0
    expired: int = 0
    rejected: int = 0
    dead_lettered: int = 0


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
        block_seconds: float = BLOCK_SECONDS,
    ) -> None:
        services = [services] if isinstance(services, Service) else list(services)
        if not services:
            raise ValueError("a worker needs at least one service")
        if queue is not None and len(services) != 1:
            raise ValueError("a queue name can be given only when serving one service")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if reply_ttl <= 0:
            raise ValueError("reply_ttl must be a positive number of seconds")
        if time_limit is not None and time_limit <= 0:
            raise ValueError("time_limit must be a positive number of seconds")
        self.services = services
        self.redis_url = redis_url or default_url()
        self.prefix = prefix
        self.concurrency = concurrency
        self.reply_ttl_ms = int(reply_ttl * 1000)
        self.max_message_bytes = max_message_bytes
        self.dead_letter_limit = dead_letter_limit
        self.debug = debug
        self.time_limit = time_limit
        self.block_seconds = block_seconds
        self.name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.by_queue = {queue or service.queue_key(prefix): service for service in services}
        self.stats = WorkerStats()
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self._queues = list(self.by_queue)
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._unblocker: asyncio.Future[None] | None = None
        self._busy_lock = threading.Lock()
        self._busy_handler_threads = 0
        # Twice the slots: a plain function past its time limit keeps its thread until it
        # returns, so the spare threads keep the slot it frees usable.
        self._executor = ThreadPoolExecutor(
            2 * concurrency, thread_name_prefix=HANDLER_THREAD_PREFIX
        )

    def __repr__(self) -> str:
        return f"Worker({protocol.summarize(self._queues)}, concurrency={self.concurrency})"

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
                socket_timeout=self.block_seconds + 5,
            )
        )
        # The receiving connection is named so that stop() can unblock its BLPOP at once.
        self._receiver_name = f"rpc-worker-{self.name}"
        self._receiver = redis.asyncio.Redis.from_pool(
            async_pool(
                self.redis_url,
                max_connections=1,
                socket_timeout=self.block_seconds + 5,
                client_name=self._receiver_name,
                retry=Retry(NoBackoff(), 0),
            )
        )
        try:
            if await self._wait_for_redis():
                logger.info("%s", self.describe())
                self.ready.set()
                await self._receive_until_stopped()
        finally:
            self._receiving_done.set()
            if self._unblocker is not None:
                await self._unblocker
            await self._drain()
            await self._receiver.aclose()
            await self._redis.aclose()
            self._executor.shutdown(wait=not self._busy_handler_threads)
            self.stopped.set()

    def stop(self) -> None:
        """Stop taking requests; in-flight ones finish. Safe from any thread or signal handler."""
        self._stopping = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._begin_stop)

    def _begin_stop(self) -> None:
        if self._stop_requested is not None and not self._stop_requested.is_set():
            self._stop_requested.set()
            logger.info("stopping: finishing %d request(s) in flight", len(self._in_flight))
            self._unblocker = asyncio.ensure_future(self._unblock_receiver())

    def describe(self) -> str:
        """The startup line: what is served, from where, how."""
        served = "; ".join(
            f"{service.name} [{protocol.summarize(sorted(service.functions))}] from {queue}"
            for queue, service in self.by_queue.items()
        )
        return (
            f"rpc-worker serving {served} on {redact_url(self.redis_url)} "
            f"(concurrency {self.concurrency}, pid {os.getpid()})"
        )

    async def _unblock_receiver(self) -> None:
        """CLIENT UNBLOCK the receiving BLPOP until the receive loop has exited.

        An unblocked BLPOP returns nil, so no popped message is ever abandoned; repeating
        covers a BLPOP sent just after the loop last checked for a stop.
        """
        while not self._receiving_done.is_set():
            try:
                for client in await self._redis.client_list():
                    if client.get("name") == self._receiver_name:
                        await self._redis.client_unblock(int(client["id"]))
            except REDIS_ERRORS:
                pass  # The BLPOP returns by itself within block_seconds.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._receiving_done.wait(), 0.05)

    async def _drain(self) -> None:
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    # -- connection ------------------------------------------------------------------

    async def _wait_for_redis(self, first_error: BaseException | None = None) -> bool:
        """Ping until Redis answers, backing off with jitter; log once per outage.

        Returns False if asked to stop first.
        """
        delay = 0.1
        error = first_error
        if error is None:
            try:
                await self._redis.ping()
                return True
            except REDIS_ERRORS as exc:
                error = exc
        logger.warning(
            "cannot reach Redis at %s (%s); retrying with backoff",
            redact_url(self.redis_url),
            error,
        )
        while not self._stopping:
            if await self._sleep_unless_stopped(delay * random.uniform(0.5, 1.5)):
                return False
            delay = min(delay * 2, RECONNECT_BACKOFF_CAP)
            try:
                await self._redis.ping()
            except REDIS_ERRORS:
                continue
            logger.info("connected to Redis at %s", redact_url(self.redis_url))
            return True
        return False

    async def _sleep_unless_stopped(self, seconds: float) -> bool:
        """Sleep; True if a stop was requested meanwhile."""
        assert self._stop_requested is not None
        try:
            await asyncio.wait_for(self._stop_requested.wait(), seconds)
        except asyncio.TimeoutError:
            return False
        return True

    # -- receiving ---------------------------------------------------------------------

    async def _receive_until_stopped(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        while not self._stopping:
            await slots.acquire()
            free = 1
            while not slots.locked():  # take every other free slot, without waiting
                await slots.acquire()
                free += 1
            if self._stopping:
                for _ in range(free):
                    slots.release()
                break
            try:
                queue, messages = await self._pop(free)
            except REDIS_ERRORS as exc:
                for _ in range(free):
                    slots.release()
                if not self._stopping and not await self._wait_for_redis(exc):
                    break
                continue
            for _ in range(free - len(messages)):
                slots.release()
            for raw in messages:
                task = asyncio.create_task(self._handle(queue, raw))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
                task.add_done_callback(lambda _: slots.release())

    async def _pop(self, up_to: int) -> tuple[str, list[bytes]]:
        """Wait for a message; take up to ``up_to`` from its queue in as few round trips.

        With one queue, BLPOP and an LPOP of the rest go out together; with several,
        the LPOP follows once BLPOP has said which queue had work.
        """
        queues = self._next_queue_order()
        rest = up_to - 1
        if len(queues) == 1 and rest:
            async with self._receiver.pipeline(transaction=False) as pipe:
                pipe.blpop(queues, self.block_seconds)
                pipe.lpop(queues[0], rest)
                popped, more = await pipe.execute()
        else:
            popped, more = await self._receiver.blpop(queues, self.block_seconds), None
        if popped is None:
            # An unblocked BLPOP (at stop) may still be followed by a successful LPOP.
            return queues[0], list(more or [])
        queue_name, first = cast(tuple[bytes, bytes], popped)
        queue = queue_name.decode()
        if more is None and rest:
            more = await self._receiver.lpop(queue, rest)
        return queue, [first, *(more or [])]

    def _next_queue_order(self) -> list[str]:
        """Rotate the queues BLPOP scans, so a busy service cannot starve the others."""
        if len(self._queues) > 1:
            self._queues.append(self._queues.pop(0))
        return self._queues

    # -- handling ----------------------------------------------------------------------

    async def _handle(self, queue: str, raw: bytes) -> None:
        try:
            await self._handle_message(queue, raw)
        except Exception:  # The last line of defence: log it, keep serving.
            logger.exception("unexpected error handling a message from %s", queue)

    async def _handle_message(self, queue: str, raw: bytes) -> None:
        self.stats.received += 1
        service = self.by_queue[queue]
        message = protocol.decode_message(raw, self.max_message_bytes)
        if isinstance(message, protocol.Rejected):
            await self._reject(service, queue, raw, message)
            return
        reply_to = message.reply_to
        if reply_to is not None:
            problem = protocol.reply_key_problem(reply_to, self.by_queue, self.prefix)
            if problem is not None:
                await self._dead_letter(service, queue, raw, problem)
                return
        if protocol.is_expired(message.deadline, time.time()):
            self.stats.expired += 1
            logger.debug("skipped a request to %s whose caller stopped waiting", service.name)
            return
        if reply_to is None and protocol.expects_reply(message.payload):
            await self._dead_letter(service, queue, raw, "request has no usable reply key")
            return
        response = await service.dispatch(
            message.payload,
            deadline=message.deadline,
            run_sync=self._run_sync,
            debug=self.debug,
            time_limit=self.time_limit,
        )
        if response is None:
            self.stats.notifications += 1
            return
        self._log_error_responses(service, message.payload, response)
        assert reply_to is not None
        await self._reply(reply_to, protocol.encode_response(response))

    async def _run_sync(self, func: Callable[[], Any]) -> Any:
        assert self._loop is not None
        with self._busy_lock:
            self._busy_handler_threads += 1
        return await self._loop.run_in_executor(self._executor, self._tracked, func)

    def _tracked(self, func: Callable[[], Any]) -> Any:
        try:
            return func()
        finally:
            with self._busy_lock:
                self._busy_handler_threads -= 1

    @property
    def busy_handler_threads(self) -> int:
        """Threads running a plain-function handler now: after a stop, those past a limit."""
        return self._busy_handler_threads

    async def _reject(
        self, service: Service, queue: str, raw: bytes, rejected: protocol.Rejected
    ) -> None:
        self.stats.rejected += 1
        reply_to = rejected.reply_to
        if reply_to is None or protocol.reply_key_problem(reply_to, self.by_queue, self.prefix):
            await self._dead_letter(service, queue, raw, rejected.reason)
            return
        logger.warning(
            "rejected a message to %s (%s); replied with error %d",
            service.name,
            rejected.reason,
            rejected.error.code,
        )
        response = protocol.error_response(rejected.request_id, rejected.error)
        await self._reply(reply_to, protocol.encode_response(response))

    def _log_error_responses(self, service: Service, payload: Any, response: Any) -> None:
        """One line for each request the caller got wrong; handler failures log their own."""
        methods = {
            item.get("id"): item.get("method")
            for item in (payload if isinstance(payload, list) else [payload])
            if isinstance(item, dict) and protocol.is_valid_id(item.get("id"))
        }
        for item in response if isinstance(response, list) else [response]:
            error = item.get("error") if isinstance(item, dict) else None
            if error is None or error.get("code") == INTERNAL_ERROR:
                continue
            is_reserved = -32768 <= error.get("code", 0) <= -32000
            logger.log(
                logging.WARNING if is_reserved else logging.DEBUG,
                "%s.%s: error %s %s (%s)",
                service.name,
                methods.get(item.get("id"), "?"),
                error.get("code"),
                error.get("message"),
                error.get("data", ""),
            )

    # -- writing -----------------------------------------------------------------------

    async def _reply(self, reply_to: str, body: bytes) -> None:
        """Push the reply and set its expiry in one round trip, so unread replies vanish."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.rpush(reply_to, body)
                pipe.pexpire(reply_to, self.reply_ttl_ms)
                await pipe.execute()
            self.stats.replied += 1
        except REDIS_ERRORS as exc:
            logger.error("could not write a reply to %s: %s", reply_to, exc)

    async def _dead_letter(self, service: Service, queue: str, raw: bytes, reason: str) -> None:
        """Keep an undeliverable message, why and when, in a bounded list."""
        self.stats.dead_lettered += 1
        key = protocol.dead_letter_key(service.name, self.prefix)
        logger.warning("dead-lettered a message to %s: %s", service.name, reason)
        entry = protocol.encode_dead_letter(raw, reason, queue, time.time())
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.rpush(key, entry)
                pipe.ltrim(key, -self.dead_letter_limit, -1)
                await pipe.execute()
        except REDIS_ERRORS as exc:
            logger.error("could not write a dead letter to %s: %s", key, exc)


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
