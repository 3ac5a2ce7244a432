"""The asyncio client: many calls in flight over a bounded number of connections.

Every call of one AsyncClient names the same reply key, unique to that client. One
listener task BLPOPs that key and hands each reply to the call waiting for its id, so
a thousand calls in flight hold one blocking connection, not a thousand. Requests go
out over at most ``max_connections - 1`` pooled connections. Workers see nothing new:
a reply key is a reply key (docs/protocol.md, "one reply key for many calls").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio
import redis.exceptions

from .. import protocol
from ..connection import REDIS_ERRORS, async_pool, default_url, exchange, redact_url
from ..errors import InternalError, RpcConnectionError, RpcRedisError, RpcTimeout
from .proxy import BatchHandle, Params, new_request_id
from .sync import CallSettings, ProxyMaker, blpop_timeout, effective_timeout

logger = logging.getLogger("rpc_redis.aio")

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 64
# The listener's BLPOP returns at least this often to notice it has nothing to wait for.
LISTEN_BLOCK_SECONDS = 1.0
# Replies taken in one round trip after the first (LPOP with a count: Redis 6.2+).
DRAIN_COUNT = 128
# Messages in one RPUSH when many calls are flushed together.
PUSH_CHUNK = 256


class AsyncClient(ProxyMaker):
    """The asyncio twin of :class:`rpc_redis.Client`, for one event loop.

    >>> async with AsyncClient("redis://localhost:6379/0") as client:
    ...     await client.proxy("calculator").add(1, 2)
    3
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        prefix: str = protocol.DEFAULT_PREFIX,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        **redis_options: Any,
    ) -> None:
        if max_connections < 2:
            raise ValueError("an AsyncClient needs two connections: one listens, one sends")
        self.url = url or default_url()
        self.settings = CallSettings(prefix, timeout)
        self.reply_key = self.settings.new_reply_key()
        # Named, so its connections can be told apart in CLIENT LIST.
        redis_options.setdefault("client_name", f"rpc-client-{self.reply_key.rsplit(':', 1)[-1]}")
        self.client_name: str = redis_options["client_name"]
        # No socket timeout: redis-py would wrap every send in a task; every read here
        # passes its own timeout instead.
        self._pool = async_pool(
            self.url, max_connections=max_connections, socket_timeout=None, **redis_options
        )
        self._send_slots = asyncio.Semaphore(max_connections - 1)
        self._pending: dict[Any, InFlight] = {}
        self._listener: asyncio.Task[None] | None = None
        self._outbox: dict[str, list[tuple[bytes, InFlight]]] = {}
        self._flush_scheduled = False
        self._flushes: set[asyncio.Future[None]] = set()
        self._outage_logged = False

    # -- public API ------------------------------------------------------------------

    async def call(
        self,
        service: str,
        method: str,
        params: Params | None = None,
        *,
        timeout: float | None = None,
        queue: str | None = None,
    ) -> Any:
        queue_key = self.settings.queue_for(service, queue)
        return await self._call(
            service, queue_key, method, params or [], timeout or self.settings.timeout
        )

    def batch(
        self, service: str, *, timeout: float | None = None, queue: str | None = None
    ) -> AsyncBatch:
        return AsyncBatch(self, service, self.settings.queue_for(service, queue), timeout)

    async def aclose(self) -> None:
        """Stop listening and close every connection; calls still waiting fail."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        for call in self._pending.values():
            call.fail(RpcConnectionError("the client was closed"))
        await self._pool.disconnect()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- calls -----------------------------------------------------------------------

    async def _call(
        self, service: str, queue: str, method: str, params: Params, timeout: float
    ) -> Any:
        request_id = new_request_id()
        request = protocol.request_object(method, params, request_id)
        reply = await self._roundtrip(service, method, queue, request, [request_id], timeout)
        if not isinstance(reply, dict):
            raise InternalError("Reply does not answer this call", data=reply)
        return protocol.result_of(reply)

    async def _notify(self, service: str, queue: str, payload: Any, timeout: float) -> None:
        await self._send(service, "notification", queue, payload, [], timeout)

    async def _roundtrip(
        self,
        service: str,
        method: str,
        queue: str,
        payload: Any,
        request_ids: list[Any],
        timeout: float,
    ) -> Any:
        """Push a request naming this client's reply key; wait for the listener to route it."""
        return await self._send(
            service, method, queue, payload, request_ids, effective_timeout(timeout)
        )

    async def _send(
        self,
        service: str,
        method: str,
        queue: str,
        payload: Any,
        request_ids: list[Any],
        timeout: float,
    ) -> Any:
        """Queue one message for the next flush and await its one future, settled by
        whichever comes first: a failed push, the reply (or, for a notification, the push),
        or the deadline's one timer.

        Every message queued in one pass of the event loop goes out in one round trip
        (one RPUSH per queue): a thousand gathered calls cost a handful of writes.
        """
        reply_to = self.reply_key if request_ids else None
        message = protocol.encode_envelope(payload, reply_to, time.time() + timeout)
        loop = asyncio.get_running_loop()
        call = InFlight(loop.create_future(), service, method, timeout, bool(request_ids))
        for request_id in request_ids:
            self._pending[request_id] = call
        if request_ids:
            self._ensure_listener()
        self._outbox.setdefault(queue, []).append((message, call))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._start_flush)
        deadline = loop.call_later(timeout, call.expire)
        try:
            return await call.future
        finally:
            deadline.cancel()
            for request_id in request_ids:
                self._pending.pop(request_id, None)

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, {}
        flush = asyncio.ensure_future(self._flush(outbox))
        self._flushes.add(flush)
        flush.add_done_callback(self._flushes.discard)

    async def _flush(self, outbox: dict[str, list[tuple[bytes, InFlight]]]) -> None:
        """RPUSH everything in the outbox on one pooled connection, in one round trip."""
        chunks = [
            (queue, chunk)
            for queue, messages in outbox.items()
            for chunk in chunked(messages, PUSH_CHUNK)
        ]
        commands = [("RPUSH", queue, *(message for message, _ in chunk)) for queue, chunk in chunks]
        try:
            async with self._send_slots:
                connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
                try:
                    responses = await exchange(connection, commands, self.settings.timeout)
                finally:
                    await self._pool.release(connection)
        except (*REDIS_ERRORS, asyncio.CancelledError) as exc:
            responses = [exc] * len(chunks)
        for (queue, chunk), response in zip(chunks, responses, strict=True):
            for _, call in chunk:
                if isinstance(response, BaseException):
                    call.fail(self._push_error(call, queue, response))
                elif not call.expects_reply:
                    call.settle(None)

    def _push_error(self, call: InFlight, queue: str, error: BaseException) -> BaseException:
        """What the caller of a message that Redis did not take sees."""
        if isinstance(error, redis.exceptions.TimeoutError):
            return RpcTimeout(call.service, call.method, call.timeout)
        if isinstance(error, redis.exceptions.ResponseError):  # e.g. the queue key holds a string
            mapped = RpcRedisError(f"Redis refused the request on {queue}: {error}")
        elif isinstance(error, REDIS_ERRORS):
            mapped = RpcConnectionError(
                f"Redis at {redact_url(self.url)} failed during the call: {error}"
            )
        else:
            return error  # the flush was cancelled: the loop is closing
        mapped.__cause__ = error  # as `raise mapped from error` would
        return mapped

    # -- the listener ------------------------------------------------------------------

    def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        """BLPOP this client's reply key while calls wait; route each reply by its ids."""
        connection: redis.asyncio.Connection | None = None
        try:
            while self._pending:
                try:
                    if connection is None:
                        connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
                    # BLPOP waits for a reply; the LPOP after it, in the same round trip,
                    # takes every other reply already waiting.
                    popped, drained = await exchange(
                        connection,
                        [
                            ("BLPOP", self.reply_key, blpop_timeout(LISTEN_BLOCK_SECONDS)),
                            ("LPOP", self.reply_key, DRAIN_COUNT),
                        ],
                        read_timeout=LISTEN_BLOCK_SECONDS + 5,
                    )
                except REDIS_ERRORS as exc:
                    if connection is not None:
                        await connection.disconnect()
                    await self._back_off(exc)
                    continue
                if self._outage_logged:
                    logger.info("reconnected to Redis at %s", redact_url(self.url))
                    self._outage_logged = False
                if popped is not None:
                    self._route(popped[1])
                for raw in drained or ():
                    self._route(raw)
        finally:
            # Nothing awaits between the check of _pending and this line, so a call
            # added after it starts a new listener.
            if self._listener is asyncio.current_task():
                self._listener = None
            if connection is not None:
                await self._pool.release(connection)

    async def _back_off(self, error: BaseException) -> None:
        if not self._outage_logged:
            logger.warning(
                "lost Redis at %s (%s); calls in flight may time out", redact_url(self.url), error
            )
            self._outage_logged = True
        await asyncio.sleep(0.1)

    def _route(self, raw: bytes) -> None:
        try:
            reply = protocol.decode_reply(raw)
        except InternalError as exc:
            logger.warning("unreadable reply on %s: %s", self.reply_key, exc.data)
            return
        for request_id in protocol.reply_ids(reply):
            if not protocol.is_valid_id(request_id):
                continue
            call = self._pending.get(request_id)
            if call is not None:
                call.settle(reply)
                return
        logger.debug("a reply for no waiting call (timed out?) on %s", self.reply_key)


@dataclass(frozen=True, slots=True)
class InFlight:
    """One call or notification between its send and its outcome.

    Its caller awaits ``future`` directly, so cancelling the caller cancels the future:
    an outcome that comes later finds it done and is dropped, and no failure goes unread.
    """

    future: asyncio.Future[Any]
    service: str
    method: str
    timeout: float
    expects_reply: bool

    def settle(self, outcome: Any) -> None:
        if not self.future.done():
            self.future.set_result(outcome)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)

    def expire(self) -> None:
        """The deadline's timer: no outcome in time."""
        self.fail(RpcTimeout(self.service, self.method, self.timeout))


def chunked(items: list[T], size: int) -> list[list[T]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


class AsyncBatch(BatchHandle):
    """Calls and notifications sent as one JSON-RPC batch: ``async with client.batch(...)``."""

    _client: AsyncClient

    async def send(self) -> list[Any]:
        """Send the batch; return each call's result (or RpcError) in call order."""
        builder = self.builder
        if not self._expects_reply():
            await self._client._notify(
                builder.service, self._queue, builder.requests, self._timeout
            )
            return []
        request_ids = [result.request_id for result in builder.results]
        reply = await self._client._roundtrip(
            builder.service, "batch", self._queue, builder.requests, request_ids, self._timeout
        )
        return builder.resolve(reply)

    async def __aenter__(self) -> AsyncBatch:
        return self

    async def __aexit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None and not self.builder.sent:
            await self.send()
