"""The sync Client: call remote methods as if they were local functions.

Each call pushes its envelope and blocks on its own reply key in one round trip
(RPUSH and BLPOP pipelined on one pooled connection). Every read is bounded by the
call's remaining time, so no call outlives its timeout, even if Redis goes away. The
rules (timeouts, errors, middleware) are policy.py's, shared with the AsyncClient.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import redis

from .. import protocol
from ..connection import send_commands_sync, sync_pool
from ..errors import REDIS_FAILURES, RpcTimeout
from ..middleware import Middleware
from .batch import Batch
from .policy import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TIMEOUT,
    ClientHooks,
    Finish,
    answer,
    blpop_timeout,
    effective_timeout,
    new_request_id,
)
from .proxy import Params, ProxyMaker

# How long past a call's timeout a read may wait for Redis's own BLPOP timeout reply.
READ_GRACE = 0.25


class Client(ProxyMaker):
    """A thread-safe client holding at most ``max_connections`` Redis connections.

    >>> client = Client("redis://localhost:6379/0", timeout=5.0)
    >>> calc = client.proxy("calculator")
    >>> calc.add(1, 2)
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
        super().__init__(url, prefix, timeout, middleware, redis_options)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._pool = sync_pool(
            self.url,
            max_connections=max_connections,
            socket_timeout=self.settings.timeout,
            **redis_options,
        )

    # -- public API ------------------------------------------------------------------

    def call(
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
        return self._call(service, queue_key, method, params or [], call_timeout)

    def batch(
        self, service: str, *, timeout: float | None = None, queue: str | None = None
    ) -> Batch:
        """Collect calls to send as one JSON-RPC batch; see :class:`Batch`."""
        queue_key = self.settings.queue_for(service, queue)
        timeout = self.settings.timeout_for(timeout)
        return Batch(self._roundtrip, self._notify, service, queue_key, timeout)

    def close(self) -> None:
        self._pool.disconnect()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- calls -----------------------------------------------------------------------

    def _call(self, service: str, queue: str, method: str, params: Params, timeout: float) -> Any:
        request = protocol.request_object(method, params, new_request_id())
        return self._roundtrip(service, method, queue, request, timeout, answer)

    def _notify(self, service: str, queue: str, payload: Any, timeout: float) -> None:
        if self._hooks is None:
            self._send(service, "notification", queue, payload, timeout, expects_reply=False)
        else:
            self._send_hooked(self._hooks, service, "notification", queue, payload, timeout, None)

    def _roundtrip(
        self, service: str, method: str, queue: str, payload: Any, timeout: float, finish: Finish
    ) -> Any:
        """Push a request, wait for its reply on a fresh reply key, and finish it."""
        timeout = effective_timeout(timeout)
        if self._hooks is None:
            reply = self._send(service, method, queue, payload, timeout, expects_reply=True)
            return finish(payload, reply)
        return self._send_hooked(self._hooks, service, method, queue, payload, timeout, finish)

    def _send_hooked(
        self,
        hooks: ClientHooks,
        service: str,
        method: str,
        queue: str,
        payload: Any,
        timeout: float,
        finish: Finish | None,
    ) -> Any:
        """:meth:`_send` with the middleware around it; what its caller gets (``finish``
        of its reply; None for notifications, which get none)."""
        deadline = time.time() + timeout
        with hooks.before_send(service, payload, deadline) as outgoing:
            reply = self._send(
                service,
                method,
                queue,
                payload,
                timeout,
                expects_reply=finish is not None,
                deadline=deadline,
                meta=outgoing.meta,
            )
            outgoing.outcome = None if finish is None else finish(payload, reply)
        return outgoing.outcome

    def _send(
        self,
        service: str,
        method: str,
        queue: str,
        payload: Any,
        timeout: float,
        *,
        expects_reply: bool,
        deadline: float | None = None,
        meta: dict[str, str] | None = None,
    ) -> Any:
        """RPUSH the envelope and, for a reply, BLPOP a fresh reply key in the same
        write; the reply (None for notifications)."""
        if deadline is None:
            deadline = time.time() + timeout
        if not expects_reply:
            message = protocol.encode_envelope(payload, None, deadline, meta)
            self._exchange([("RPUSH", queue, message)], service, method, queue, timeout)
            return None
        reply_to = self.settings.new_reply_key()
        message = protocol.encode_envelope(payload, reply_to, deadline, meta)
        commands = [("RPUSH", queue, message), ("BLPOP", reply_to, blpop_timeout(timeout))]
        popped = self._exchange(commands, service, method, queue, timeout)
        if popped is None:
            raise RpcTimeout(service, method, timeout)
        return protocol.decode_reply(popped[1])

    def _exchange(
        self,
        commands: list[tuple[Any, ...]],
        service: str,
        method: str,
        queue: str,
        timeout: float,
    ) -> Any:
        """Send commands in one write on one pooled connection; read every response in
        time; the last one. Whatever fails is raised as policy maps it."""
        deadline = time.monotonic() + timeout
        if not self._slots.acquire(timeout=timeout):
            raise RpcTimeout(service, method, timeout)
        try:
            connection = self._pool.get_connection()
            try:
                return self._send_and_read(connection, commands, deadline)
            except BaseException:
                # Responses may be left unread (a refused RPUSH's BLPOP is still
                # waiting): a connection is never handed out again half-read.
                connection.disconnect()  # type: ignore[no-untyped-call]
                raise
            finally:
                self._pool.release(connection)
        except REDIS_FAILURES as exc:
            raise self.settings.exchange_error(exc, service, method, timeout, queue) from exc
        finally:
            self._slots.release()

    @staticmethod
    def _send_and_read(
        connection: redis.Connection, commands: list[tuple[Any, ...]], deadline: float
    ) -> Any:
        send_commands_sync(connection, commands)
        last = len(commands) - 1
        for _ in range(last):
            # An error reply raises here, before a BLPOP behind a refused push is waited out.
            connection.read_response(timeout=max(deadline - time.monotonic(), 0.001))
        return connection.read_response(
            timeout=max(deadline - time.monotonic(), 0.001) + READ_GRACE
        )
