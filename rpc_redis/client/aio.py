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

from .. import protocol
from ..connection import async_pool, exchange
from ..errors import REDIS_FAILURES, InternalError, RpcConnectionError, RpcTimeout
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
    new_request_id,
    retrying_helps,
)
from .proxy import Params, ProxyMaker

logger = logging.getLogger("rpc_redis.aio")

T = TypeVar("T")

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
        middleware: Sequence[Middleware] = (),
        **redis_options: Any,
    ) -> None:
        if max_connections < 2:
            raise ValueError("an AsyncClient needs two connections: one listens, one sends")
        super().__init__(url, prefix, timeout, middleware, redis_options)
        self.reply_key = self.settings.new_reply_key()
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
        return await self._roundtrip(service, method, queue, request, [request_id], timeout, answer)

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
                except BaseException:
                    # A connection an error (or a cancel) interrupted may hold unread
                    # responses: it is never handed out again half-read.
                    await connection.disconnect(nowait=True)
                    raise
                finally:
                    await self._pool.release(connection)
        except (*REDIS_FAILURES, asyncio.CancelledError) as exc:
            responses = [exc] * len(chunks)
        for (queue, chunk), response in zip(chunks, responses, strict=True):
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
                except REDIS_FAILURES as exc:
                    if connection is not None:
                        await connection.disconnect()
                    if retrying_helps(exc):
                        await self._back_off(exc)
                    else:
                        self._fail_waiting(exc)
                    continue
                except BaseException:  # cancelled: never back to the pool half-read
                    if connection is not None:
                        await connection.disconnect(nowait=True)
                    raise
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
                await self._pool.release(connection)

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


def chunked(items: list[T], size: int) -> list[list[T]]:
    return [items[start : start + size] for start in range(0, len(items), size)]
