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
from typing import Any

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from . import protocol
from .connection import REDIS_ERRORS, async_pool, default_url, redact_url
from .errors import INTERNAL_ERROR, TIME_LIMIT_EXCEEDED
from .receive import Slots, move_more, move_requests, pop_more, pop_requests
from .reliable import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_MAX_DELIVERIES, Reliability
from .service import Service
from .writer import Writer

logger = logging.getLogger("rpc_redis.worker")

DEFAULT_CONCURRENCY = 8
DEFAULT_DEAD_LETTER_LIMIT = 10_000
# How long one BLPOP blocks before the loop goes round again.
BLOCK_SECONDS = 5.0
RECONNECT_BACKOFF_CAP = 5.0
# How long a worker keeps trying to write a reply through a Redis outage (or until the
# request's deadline, if sooner).
WRITE_RETRY_SECONDS = 30.0
# Bound on the worker's occasional commands (PING, heartbeats, CLIENT UNBLOCK).
ADMIN_TIMEOUT = 10.0
HANDLER_THREAD_PREFIX = "rpc-handler"


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
        reliable: bool = False,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
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
        # Reliable queues: requests move into an in-progress list until answered.
        self.reliable_queues = {
            queue: service.name
            for queue, service in self.by_queue.items()
            if reliable or service.reliable
        }
        self.max_deliveries = max_deliveries
        self.heartbeat_interval = heartbeat_interval
        self.stats = WorkerStats()
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self._plain_queues = [q for q in self.by_queue if q not in self.reliable_queues]
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
        self._reconnecting = asyncio.Lock()
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
        receivers = [
            (self._receiving_connection(), queues)
            for queues in ([[q] for q in self.reliable_queues] + [self._plain_queues])
            if queues
        ]
        upkeep: asyncio.Task[None] | None = None
        try:
            if await self._wait_for_redis():
                if self.reliable_queues:
                    await asyncio.wait_for(self._reliability.beat(), ADMIN_TIMEOUT)
                    upkeep = asyncio.create_task(self._keep_up_reliability())
                logger.info("%s", self.describe())
                self.ready.set()
                slots = Slots(self.concurrency)
                self._receivers = len(receivers)
                await asyncio.gather(
                    *(self._receive(connection, queues, slots) for connection, queues in receivers)
                )
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
            for connection, _ in receivers:
                await connection.disconnect()
            await self._redis.aclose()
            self._executor.shutdown(wait=not self._busy_handler_threads)
            self.stopped.set()

    def _receiving_connection(self) -> redis.asyncio.Connection:
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

    def _is_reliable(self, queue: str) -> bool:
        return queue in self.reliable_queues

    async def _keep_up_reliability(self) -> None:
        """Beat the heartbeat and look for dead workers, every heartbeat interval."""
        while True:
            try:
                await asyncio.wait_for(self._reliability.beat(), ADMIN_TIMEOUT)
                await asyncio.wait_for(self._reliability.recover_dead_workers(), ADMIN_TIMEOUT)
            except (*REDIS_ERRORS, asyncio.TimeoutError):
                pass  # The receive loops log the outage and wait for Redis.
            await asyncio.sleep(self.heartbeat_interval)

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
        reliable = f", reliable: {', '.join(self.reliable_queues)}" if self.reliable_queues else ""
        return (
            f"rpc-worker serving {served} on {redact_url(self.redis_url)} "
            f"(concurrency {self.concurrency}, pid {os.getpid()}{reliable})"
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

    # -- connection ------------------------------------------------------------------

    async def _wait_for_redis(self, first_error: BaseException | None = None) -> bool:
        """Ping until Redis answers, backing off with jitter; log once per outage.

        Returns False if asked to stop first.
        """
        async with self._reconnecting:  # several receivers, one outage, one log line
            return await self._reconnect(first_error)

    async def _reconnect(self, first_error: BaseException | None) -> bool:
        delay = 0.1
        try:
            await asyncio.wait_for(self._redis.ping(), ADMIN_TIMEOUT)
            return True  # never lost, or another receiver already reconnected
        except (*REDIS_ERRORS, asyncio.TimeoutError) as exc:
            error = exc if first_error is None else first_error
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
                await asyncio.wait_for(self._redis.ping(), ADMIN_TIMEOUT)
            except (*REDIS_ERRORS, asyncio.TimeoutError):
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

    async def _receive(
        self, connection: redis.asyncio.Connection, queues: list[str], slots: Slots
    ) -> None:
        """Pop requests while there are free slots; each runs as a task holding a slot."""
        # Alone, a receiver takes every free slot and asks for that many requests in
        # its one round trip. Beside others, it blocks holding one slot, and takes more
        # only once a request has come: a slot held in a blocked BLPOP is idle.
        alone = self._receivers == 1
        refused = ""  # the last error reply logged, so that a lasting one is logged once
        while not self._stopping:
            taken = await slots.take(self.concurrency if alone else 1)
            if self._stopping:
                slots.give_back(taken)
                break
            try:
                queue, messages = await self._take_requests(connection, queues, taken)
                if messages and not alone:
                    more = slots.take_now(self.concurrency)
                    taken += more
                    messages += await self._take_more(connection, queue, more)
            except REDIS_ERRORS as exc:
                slots.give_back(taken)
                if not self._stopping and not await self._wait_for_redis(exc):
                    break
                continue
            except redis.exceptions.ResponseError as exc:  # e.g. a queue key holding a string
                slots.give_back(taken)
                if str(exc) != refused:
                    logger.error("Redis refused to pop from %s: %s; retrying", queues, exc)
                    refused = str(exc)
                if await self._sleep_unless_stopped(1.0):
                    break
                continue
            refused = ""
            slots.give_back(taken - len(messages))
            for raw in messages:
                task = asyncio.create_task(self._handle(queue, raw))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
                task.add_done_callback(lambda _: slots.give_back())
            if messages:
                # One pass for the handlers just started: those that finish without
                # waiting send their replies with the next BLPOP.
                await asyncio.sleep(0)

    async def _take_requests(
        self, connection: redis.asyncio.Connection, queues: list[str], up_to: int
    ) -> tuple[str, list[bytes]]:
        if self._is_reliable(queues[0]):
            in_progress = self._reliability.in_progress_key(queues[0])
            return await move_requests(
                connection, queues[0], in_progress, up_to, self.block_seconds
            )
        return await pop_requests(connection, queues, up_to, self.block_seconds, self._writer)

    async def _take_more(
        self, connection: redis.asyncio.Connection, queue: str, count: int
    ) -> list[bytes]:
        """Up to ``count`` more requests from ``queue``, without blocking."""
        if not count:
            return []
        if self._is_reliable(queue):
            in_progress = self._reliability.in_progress_key(queue)
            return await move_more(connection, queue, in_progress, count)
        return await pop_more(connection, queue, count)

    # -- handling ----------------------------------------------------------------------

    async def _handle(self, queue: str, raw: bytes) -> None:
        try:
            outcome = await self._outcome(queue, raw)
            await self._finish(queue, raw, outcome)
        except Exception:  # The last line of defence: log it, keep serving.
            logger.exception("unexpected error handling a message from %s", queue)

    async def _outcome(self, queue: str, raw: bytes) -> Outcome:
        """Decide what a message earns: a reply, a dead letter, or nothing."""
        self.stats.received += 1
        service = self.by_queue[queue]
        message = protocol.decode_message(raw, self.max_message_bytes)
        if isinstance(message, protocol.Rejected):
            return self._rejection(service, message)
        reply_to = message.reply_to
        if reply_to is not None:
            problem = protocol.reply_key_problem(reply_to, self.by_queue, self.prefix)
            if problem is not None:
                return Outcome(dead_letter_reason=problem)
        if protocol.is_expired(message.deadline, time.time()):
            self.stats.expired += 1
            logger.debug("skipped a request to %s whose caller stopped waiting", service.name)
            return Outcome()
        if reply_to is None and protocol.expects_reply(message.payload):
            return Outcome(dead_letter_reason="request has no usable reply key")
        response = await service.dispatch(
            message.payload,
            deadline=message.deadline,
            run_sync=self._run_sync,
            debug=self.debug,
            time_limit=self.time_limit,
        )
        if response is None:
            self.stats.notifications += 1
            return Outcome(deadline=message.deadline)
        self._log_error_responses(service, message.payload, response)
        return Outcome(reply_to, protocol.encode_response(response), deadline=message.deadline)

    def _rejection(self, service: Service, rejected: protocol.Rejected) -> Outcome:
        self.stats.rejected += 1
        reply_to = rejected.reply_to
        if reply_to is None or protocol.reply_key_problem(reply_to, self.by_queue, self.prefix):
            return Outcome(dead_letter_reason=rejected.reason)
        logger.warning(
            "rejected a message to %s (%s); replied with error %d",
            service.name,
            rejected.reason,
            rejected.error.code,
        )
        response = protocol.error_response(rejected.request_id, rejected.error)
        return Outcome(reply_to, protocol.encode_response(response))

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

    def _log_error_responses(self, service: Service, payload: Any, response: Any) -> None:
        """One line for each request the caller got wrong; handler failures log their own."""
        methods = {
            item.get("id"): item.get("method")
            for item in (payload if isinstance(payload, list) else [payload])
            if isinstance(item, dict) and protocol.is_valid_id(item.get("id"))
        }
        for item in response if isinstance(response, list) else [response]:
            error = item.get("error") if isinstance(item, dict) else None
            if error is None or error.get("code") in (INTERNAL_ERROR, TIME_LIMIT_EXCEEDED):
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

    async def _finish(self, queue: str, raw: bytes, outcome: Outcome) -> None:
        """Write the outcome in one round trip; for a reliable queue, in one transaction
        with the removal of the request from this worker's in-progress list.

        A reply key gets its expiry with the reply, so a reply nobody reads vanishes.
        """
        service = self.by_queue[queue]
        in_progress = self._reliability.in_progress_key(queue) if self._is_reliable(queue) else None
        commands: list[tuple[Any, ...]] = []
        if outcome.reply_to is not None and outcome.body is not None:
            commands.append(
                (
                    "EVAL",
                    protocol.PUSH_REPLY_SCRIPT,
                    1,
                    outcome.reply_to,
                    outcome.body,
                    self.reply_ttl_ms,
                )
            )
        if outcome.dead_letter_reason is not None:
            self.stats.dead_lettered += 1
            logger.warning(
                "dead-lettered a message to %s: %s", service.name, outcome.dead_letter_reason
            )
            key = protocol.dead_letter_key(service.name, self.prefix)
            entry = protocol.encode_dead_letter(raw, outcome.dead_letter_reason, queue, time.time())
            commands.append(("RPUSH", key, entry))
            commands.append(("LTRIM", key, -self.dead_letter_limit, -1))
        if in_progress is not None:
            commands.append(("LREM", in_progress, 1, raw))
        if not commands:
            return
        give_up_at = time.time() + WRITE_RETRY_SECONDS
        if outcome.deadline is not None:
            give_up_at = max(min(give_up_at, outcome.deadline), time.time() + 1)
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
        failures = [result for result in results if isinstance(result, Exception)]
        if failures:
            logger.error("could not write the outcome of a request to %s: %s", queue, failures[0])
        elif outcome.reply_to is not None:
            pushed = results[0]
            if pushed in (b"ok", "ok"):
                self.stats.replied += 1
            else:  # the reply key holds another type: keep the request, leave the key
                kind = pushed.decode() if isinstance(pushed, bytes) else str(pushed)
                reason = f"reply key {outcome.reply_to!r} holds a {kind}, not a list"
                await self._finish(queue, raw, Outcome(dead_letter_reason=reason))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What handling a message produced: a reply to write, a dead letter, or neither."""

    reply_to: str | None = None
    body: bytes | None = None
    dead_letter_reason: str | None = None
    deadline: float | None = None


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
