"""The asyncio client: many calls in flight over a bounded number of connections.

Every call of one AsyncClient names the same reply key, unique to that client. One
listener task BLPOPs that key and hands each reply to the call waiting for its id, so
a thousand calls in flight hold one blocking connection, not a thousand. Requests go
out over at most ``max_connections - 1`` pooled connections. Workers see nothing new:
a reply key is a reply key (docs/protocol.md, "one reply key for many calls").
The rules (timeouts, errors, middleware) are policy.py's, shared with the sync Client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio
import redis.asyncio.retry
import redis.exceptions
from redis.backoff import NoBackoff

from .. import protocol
from ..connection import NotSentError, exchange, redirect_of
from ..connection.routes import BUSY_RETRY_SECONDS, is_busy, with_asking, without_asking
from ..errors import REDIS_FAILURES, InternalError, RpcConnectionError, RpcTimeout
from ..events import streams, wire
from ..middleware import Middleware
from .batch import AsyncBatch
from .policy import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TIMEOUT,
    ClientHooks,
    Finish,
    answer,
    blpop_timeout,
    effective_timeout,
    event_command,
    event_outcome,
    new_request_id,
    retrying_helps,
)
from .proxy import Params, ProxyMaker
from .streams import AsyncStream, StreamCall

logger = logging.getLogger("rpc_redis.aio")

T = TypeVar("T")

# The listener's BLPOP returns at least this often to notice it has nothing to wait for.
LISTEN_BLOCK_SECONDS = 1.0
# Replies taken in one round trip after the first (LPOP with a count: Redis 6.2+).
DRAIN_COUNT = 128
# Messages in one RPUSH when many calls are flushed together.
PUSH_CHUNK = 256
# How long past its wait a stream's read may take for Redis's own BLPOP timeout reply.
READ_GRACE = 0.25
# While a failover is under way, how long before a push Redis never got goes again.
FAILOVER_RETRY_SECONDS = 0.1


class AsyncClient(ProxyMaker):
    """The asyncio twin of :class:`rpc_redis.Client`, for one event loop.

    >>> async with AsyncClient("redis://localhost:6379/0") as client:
    ...     await client.proxy("calculator").add(1, 2)
    3

    ``redis=`` takes a ``redis.asyncio.Redis``, ``redis.asyncio.RedisCluster`` or
    asyncio connection pool you built, used as it is.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        redis: Any = None,
        timeout: float = DEFAULT_TIMEOUT,
        prefix: str = protocol.DEFAULT_PREFIX,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        middleware: Sequence[Middleware] = (),
        **redis_options: Any,
    ) -> None:
        if max_connections < 2:
            raise ValueError("an AsyncClient needs two connections: one listens, one sends")
        # No retries of redis-py's own: the listener rides out an outage itself.
        redis_options.setdefault("retry", no_retries())
        super().__init__(url, prefix, timeout, middleware, redis_options, redis)
        self.reply_key = self.settings.new_reply_key()
        # No socket timeout: redis-py would wrap every send in a task; every read here
        # passes its own timeout instead.
        self._routes = self.target.async_routes(
            shared=True, max_connections=max_connections, socket_timeout=None, **redis_options
        )
        self._send_slots = asyncio.Semaphore(max_connections - 1)
        # A stream waiting for its next item holds a connection: streams have their own.
        self._stream_routes = self.target.async_routes(
            max_connections=max_connections, socket_timeout=None, **redis_options
        )
        self._stream_slots = asyncio.Semaphore(max_connections)
        self._background: set[asyncio.Future[Any]] = set()
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
        """Call one method with params given as a list or a dict; ``timeout`` None
        means the client's."""
        queue_key = self.settings.queue_for(service, queue)
        call_timeout = self.settings.timeout_for(timeout)
        return await self._call(service, queue_key, method, params or [], call_timeout)

    def batch(
        self, service: str, *, timeout: float | None = None, queue: str | None = None
    ) -> AsyncBatch:
        queue_key = self.settings.queue_for(service, queue)
        timeout = self.settings.timeout_for(timeout)
        return AsyncBatch(self._roundtrip, self._notify, service, queue_key, timeout)

    async def publish(self, channel: str, data: Any, *, timeout: float | None = None) -> int:
        """Publish an event to the workers subscribed to ``channel`` now: how many
        received it. At most once: 0 means nobody listened, and the event is gone."""
        return int(await self._event("publish", channel, data, timeout, wire.DEFAULT_STREAM_MAXLEN))

    async def emit(
        self,
        topic: str,
        data: Any,
        *,
        maxlen: int = wire.DEFAULT_STREAM_MAXLEN,
        timeout: float | None = None,
    ) -> str:
        """Append a durable event to ``topic``'s stream, trimmed to about ``maxlen``
        events: its id there. Every service that consumes the topic handles it."""
        return str(await self._event("emit", topic, data, timeout, maxlen))

    def stream(
        self,
        service: str,
        method: str,
        params: Params | None = None,
        *,
        timeout: float | None = None,
        total_timeout: float | None = None,
        window: int = streams.DEFAULT_WINDOW,
        queue: str | None = None,
    ) -> AsyncStream:
        """As :meth:`rpc_redis.Client.stream`, iterated with ``async for``."""
        call = StreamCall.of(
            self.settings, service, method, params, queue, timeout, total_timeout, window
        )
        return AsyncStream(call, self._hooks, self._stream_exchange, self._in_background)

    async def aclose(self) -> None:
        """Stop listening and close every connection; calls still waiting fail."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        for call in self._pending.values():
            call.fail(RpcConnectionError("the client was closed"))
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._routes.disconnect()
        await self._stream_routes.disconnect()
        await self.target.aclose()

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
        return await self._roundtrip(service, method, queue, request, [request_id], timeout, answer)

    def _stream(
        self, service: str, queue: str, method: str, params: Params, timeout: float
    ) -> AsyncStream:
        return self.stream(service, method, params, timeout=timeout, queue=queue)

    async def _event(
        self, method: str, name: str, data: Any, timeout: float | None, maxlen: int
    ) -> Any:
        """Publish or emit, with the middleware around it."""
        timeout = effective_timeout(self.settings.timeout_for(timeout))
        prefix = self.settings.prefix
        if self._hooks is None:
            command = event_command(method, name, data, None, prefix, maxlen)
            [response] = await self._command([command], name, method, command[1], timeout)
            return event_outcome(response)
        with self._hooks.before_event(method, name, data) as outgoing:
            command = event_command(method, name, data, outgoing.meta, prefix, maxlen)
            [response] = await self._command([command], name, method, command[1], timeout)
            outgoing.outcome = event_outcome(response)
        return outgoing.outcome

    async def _command(
        self,
        commands: list[tuple[Any, ...]],
        service: str,
        method: str,
        key: str,
        timeout: float,
        *,
        streaming: bool = False,
    ) -> list[Any]:
        """Commands in one round trip on a pooled connection (a stream's own pool, for a
        stream's blocking reads): their answers, or what fails, mapped as policy says."""
        routes, slots = (
            (self._stream_routes, self._stream_slots)
            if streaming
            else (self._routes, self._send_slots)
        )
        try:
            async with slots:
                responses = await routes.exchange(commands, timeout + READ_GRACE)
            for response in responses:
                if isinstance(response, redis.exceptions.ResponseError):
                    raise response
        except REDIS_FAILURES as exc:
            raise self.settings.exchange_error(exc, service, method, timeout, key) from exc
        return responses

    async def _stream_exchange(
        self, commands: list[tuple[Any, ...]], service: str, method: str, key: str, wait: float
    ) -> list[Any]:
        return await self._command(commands, service, method, key, wait, streaming=True)

    def _in_background(self, work: Any) -> None:
        """Run a stream's cancel that nobody awaits; :meth:`aclose` waits for it."""
        future = asyncio.ensure_future(work)
        self._background.add(future)
        future.add_done_callback(self._background.discard)

    async def _notify(self, service: str, queue: str, payload: Any, timeout: float) -> None:
        if self._hooks is None:
            await self._send(service, "notification", queue, payload, [], timeout)
        else:
            await self._send_hooked(
                self._hooks, service, "notification", queue, payload, [], timeout, None
            )

    async def _roundtrip(
        self,
        service: str,
        method: str,
        queue: str,
        payload: Any,
        request_ids: list[Any],
        timeout: float,
        finish: Finish,
    ) -> Any:
        """Push a request naming this client's reply key, wait for the listener to route
        its reply, and finish it."""
        timeout = effective_timeout(timeout)
        if self._hooks is None:
            reply = await self._send(service, method, queue, payload, request_ids, timeout)
            return finish(payload, reply)
        return await self._send_hooked(
            self._hooks, service, method, queue, payload, request_ids, timeout, finish
        )

    async def _send_hooked(
        self,
        hooks: ClientHooks,
        service: str,
        method: str,
        queue: str,
        payload: Any,
        request_ids: list[Any],
        timeout: float,
        finish: Finish | None,
    ) -> Any:
        """:meth:`_send` with the middleware around it; what its caller gets (``finish``
        of its reply; None for notifications, which get none)."""
        deadline = time.time() + timeout
        with hooks.before_send(service, payload, deadline) as outgoing:
            reply = await self._send(
                service, method, queue, payload, request_ids, timeout, deadline, outgoing.meta
            )
            outgoing.outcome = None if finish is None else finish(payload, reply)
        return outgoing.outcome

    async def _send(
        self,
        service: str,
        method: str,
        queue: str,
        payload: Any,
        request_ids: list[Any],
        timeout: float,
        deadline: float | None = None,
        meta: dict[str, str] | None = None,
    ) -> Any:
        """Queue one message for the next flush and await its one future, settled by
        whichever comes first: a failed push, the reply (or, for a notification, the push),
        or the deadline's one timer.

        Every message queued in one pass of the event loop goes out in one round trip
        (one RPUSH per queue): a thousand gathered calls cost a handful of writes.
        """
        reply_to = self.reply_key if request_ids else None
        if deadline is None:
            deadline = time.time() + timeout
        message = protocol.encode_envelope(payload, reply_to, deadline, meta)
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
        expiry = loop.call_later(timeout, call.expire)
        try:
            return await call.future
        finally:
            expiry.cancel()
            for request_id in request_ids:
                self._pending.pop(request_id, None)

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, {}
        flush = asyncio.ensure_future(self._flush(outbox))
        self._flushes.add(flush)
        flush.add_done_callback(self._flushes.discard)

    async def _flush(self, outbox: dict[str, list[tuple[bytes, InFlight]]]) -> None:
        """RPUSH everything in the outbox on one pooled connection, in one round trip (on
        a cluster, one per node, together)."""
        chunks = [
            (queue, chunk)
            for queue, messages in outbox.items()
            for chunk in chunked(messages, PUSH_CHUNK)
        ]
        commands = [("RPUSH", queue, *(message for message, _ in chunk)) for queue, chunk in chunks]
        try:
            async with self._send_slots:
                responses = await self._routes.exchange(
                    commands, self.settings.timeout, errors_in_place=True
                )
        except (*REDIS_FAILURES, asyncio.CancelledError) as exc:
            responses = [exc] * len(chunks)
        for (queue, chunk), response in zip(chunks, responses, strict=True):
            if isinstance(response, NotSentError):
                if self.settings.waits_through_failover(response):
                    self._push_again(queue, chunk)  # its calls' timers still run
                    continue
                response = response.__cause__ or response
            for _, call in chunk:
                if isinstance(response, BaseException):
                    # A cancelled flush (the loop is closing) passes its CancelledError on.
                    call.fail(
                        self.settings.exchange_error(
                            response, call.service, call.method, call.timeout, queue
                        )
                    )
                elif not call.expects_reply:
                    call.settle(None)

    def _push_again(self, queue: str, chunk: list[tuple[bytes, InFlight]]) -> None:
        """Under Sentinel or Cluster, a push Redis never got (its primary lost) goes out
        again shortly, to the primary that replaces it, while its calls wait."""
        waiting = [(message, call) for message, call in chunk if not call.future.done()]
        if not waiting:
            return

        def requeue() -> None:
            self._outbox.setdefault(queue, []).extend(waiting)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._start_flush)

        asyncio.get_running_loop().call_later(FAILOVER_RETRY_SECONDS, requeue)

    # -- the listener ------------------------------------------------------------------

    def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        """BLPOP this client's reply key while calls wait; route each reply by its ids.
        A redirection (the key's slot moved) takes the listener to the key's new node."""
        pool = self._routes.pool_for(self.reply_key)
        asking = [False, False]
        connection: redis.asyncio.Connection | None = None
        try:
            while self._pending:
                try:
                    if connection is None:
                        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
                    # BLPOP waits for a reply; the LPOP after it, in the same round trip,
                    # takes every other reply already waiting.
                    commands = [
                        ("BLPOP", self.reply_key, blpop_timeout(LISTEN_BLOCK_SECONDS)),
                        ("LPOP", self.reply_key, DRAIN_COUNT),
                    ]
                    responses = await exchange(
                        connection,
                        with_asking(commands, asking),
                        read_timeout=LISTEN_BLOCK_SECONDS + 5,
                    )
                    popped, drained = without_asking(responses, asking)
                except REDIS_FAILURES as exc:
                    if connection is not None:
                        await connection.disconnect()
                    if retrying_helps(exc):
                        await self._back_off(exc)
                        if self._routes.is_cluster:  # the key's node may have been replaced
                            if connection is not None:
                                await pool.release(connection)
                                connection = None
                            pool = await self._reply_pool()
                    else:
                        self._fail_waiting(exc)
                    continue
                except BaseException:  # cancelled: never back to the pool half-read
                    if connection is not None:
                        await connection.disconnect(nowait=True)
                    raise
                if is_busy(popped) or is_busy(drained):  # a failover under way
                    await asyncio.sleep(BUSY_RETRY_SECONDS)
                    continue
                redirect = redirect_of(popped) or redirect_of(drained)
                if redirect is not None:
                    await pool.release(connection)
                    connection = None
                    pool = self._routes.follow(redirect, self.reply_key)
                    asking = [redirect.asking, redirect.asking]
                    continue
                if self._outage_logged:
                    logger.info("reconnected to Redis at %s", self.settings.where)
                    self._outage_logged = False
                self._take(popped, drained)
        finally:
            # Nothing awaits between the check of _pending and this line, so a call
            # added after it starts a new listener.
            if self._listener is asyncio.current_task():
                self._listener = None
            if connection is not None:
                await pool.release(connection)

    async def _reply_pool(self) -> redis.asyncio.ConnectionPool:
        """The pool of the reply key's node, as the cluster says after an outage."""
        with contextlib.suppress(*REDIS_FAILURES):
            await self._routes.refresh()
        return self._routes.pool_for(self.reply_key)

    def _take(self, popped: Any, drained: Any) -> None:
        """Route what one round popped; an error reply (an ACL that forbids LPOP, a reply
        key that holds a string) fails every call waiting: no round could do better."""
        if popped is not None and not isinstance(popped, BaseException):
            self._route(popped[1])
        if drained is not None and not isinstance(drained, BaseException):
            for raw in drained:
                self._route(raw)
        for response in (popped, drained):
            if isinstance(response, BaseException):
                self._fail_waiting(response)
                return

    def _fail_waiting(self, error: BaseException) -> None:
        waiting = list(self._pending.values())
        self._pending.clear()
        for call in waiting:
            call.fail(self.settings.exchange_error(error, call.service, call.method, call.timeout))

    async def _back_off(self, error: BaseException) -> None:
        if not self._outage_logged:
            logger.warning(
                "lost Redis at %s (%s); calls in flight may time out", self.settings.where, error
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


def no_retries() -> redis.asyncio.retry.Retry:
    return redis.asyncio.retry.Retry(NoBackoff(), 0)


def chunked(items: list[T], size: int) -> list[list[T]]:
    return [items[start : start + size] for start in range(0, len(items), size)]
