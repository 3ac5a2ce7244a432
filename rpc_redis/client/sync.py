"""The sync Client: call remote methods as if they were local functions.

Each call pushes its envelope and blocks on its own reply key in one round trip
(RPUSH and BLPOP pipelined on one pooled connection). Every read is bounded by the
call's remaining time, so no call outlives its timeout, even if Redis goes away.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
import redis.exceptions

from .. import protocol
from ..connection import default_url, send_commands_sync, sync_pool
from ..context import current_call
from ..errors import InternalError, RpcConnectionError, RpcTimeout
from .proxy import BatchHandle, Params, ServiceProxy, new_request_id, unique_hex

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 64
# How long past a call's timeout a read may wait for Redis's own BLPOP timeout reply.
READ_GRACE = 0.25


def effective_timeout(timeout: float) -> float:
    """A call made inside a handler waits no longer than that handler's own caller."""
    if timeout <= 0:
        raise ValueError("a call's timeout must be a positive number of seconds")
    call = current_call()
    remaining = call.remaining() if call is not None else None
    return timeout if remaining is None else max(min(timeout, remaining), 0.001)


def blpop_timeout(seconds: float) -> str:
    """BLPOP's timeout argument: 0 would block forever, so never less than a millisecond."""
    return f"{max(seconds, 0.001):.3f}"


class CallSettings:
    """Where and how long: what the sync and async clients both need to place a call."""

    def __init__(self, prefix: str, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        self.prefix = prefix
        self.timeout = timeout

    def queue_for(self, service: str, queue: str | None) -> str:
        return queue or protocol.queue_key(service, self.prefix)

    def new_reply_key(self) -> str:
        return protocol.reply_key(unique_hex(), self.prefix)


class ProxyMaker:
    """What the sync and async clients share: proxies made from their own I/O."""

    settings: CallSettings

    def _call(self, service: str, queue: str, method: str, params: Params, timeout: float) -> Any:
        raise NotImplementedError

    def _notify(self, service: str, queue: str, payload: Any, timeout: float) -> Any:
        raise NotImplementedError

    def proxy(
        self, service: str, *, timeout: float | None = None, queue: str | None = None
    ) -> ServiceProxy:
        """A proxy whose attributes are the service's methods (awaitable on an AsyncClient)."""
        queue_key = self.settings.queue_for(service, queue)
        call_timeout = timeout or self.settings.timeout

        def call(method: str, params: Params) -> Any:
            return self._call(service, queue_key, method, params, call_timeout)

        def notify(method: str, params: Params) -> Any:
            payload = protocol.notification_object(method, params)
            return self._notify(service, queue_key, payload, call_timeout)

        return ServiceProxy(service, call, notify)


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
        **redis_options: Any,
    ) -> None:
        self.url = url or default_url()
        self.settings = CallSettings(prefix, timeout)
        self._slots = threading.BoundedSemaphore(max_connections)
        # Named, so its connections can be told apart in CLIENT LIST.
        redis_options.setdefault("client_name", f"rpc-client-{unique_hex()}")
        self.client_name: str = redis_options["client_name"]
        self._pool = sync_pool(
            self.url, max_connections=max_connections, socket_timeout=timeout, **redis_options
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
        """Call one method with params given as a list or a dict."""
        queue_key = self.settings.queue_for(service, queue)
        return self._call(
            service, queue_key, method, params or [], timeout or self.settings.timeout
        )

    def batch(
        self, service: str, *, timeout: float | None = None, queue: str | None = None
    ) -> Batch:
        """Collect calls to send as one JSON-RPC batch; see :class:`Batch`."""
        return Batch(self, service, self.settings.queue_for(service, queue), timeout)

    def close(self) -> None:
        self._pool.disconnect()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- calls -----------------------------------------------------------------------

    def _call(self, service: str, queue: str, method: str, params: Params, timeout: float) -> Any:
        request_id = new_request_id()
        request = protocol.request_object(method, params, request_id)
        reply = self._roundtrip(service, method, queue, request, timeout)
        if not isinstance(reply, dict) or reply.get("id") != request_id:
            raise InternalError("Reply does not answer this call", data=reply)
        return protocol.result_of(reply)

    def _notify(self, service: str, queue: str, payload: Any, timeout: float) -> None:
        message = protocol.encode_envelope(payload, None, time.time() + timeout)
        self._exchange([("RPUSH", queue, message)], service, "notification", timeout)

    def _roundtrip(
        self, service: str, method: str, queue: str, payload: Any, timeout: float
    ) -> Any:
        """Push a request and wait for its reply on a fresh reply key."""
        timeout = effective_timeout(timeout)
        reply_to = self.settings.new_reply_key()
        message = protocol.encode_envelope(payload, reply_to, time.time() + timeout)
        commands = [("RPUSH", queue, message), ("BLPOP", reply_to, blpop_timeout(timeout))]
        responses = self._exchange(commands, service, method, timeout)
        popped = responses[-1]
        if popped is None:
            raise RpcTimeout(service, method, timeout)
        return protocol.decode_reply(popped[1])

    def _exchange(
        self, commands: list[tuple[Any, ...]], service: str, method: str, timeout: float
    ) -> list[Any]:
        """Send commands in one write on one pooled connection; read every response in time."""
        deadline = time.monotonic() + timeout
        if not self._slots.acquire(timeout=timeout):
            raise RpcTimeout(service, method, timeout)
        try:
            connection = self._pool.get_connection()
            try:
                return self._send_and_read(connection, commands, deadline)
            finally:
                self._pool.release(connection)
        except redis.exceptions.TimeoutError:
            raise RpcTimeout(service, method, timeout) from None
        except (redis.exceptions.ConnectionError, OSError) as exc:
            raise RpcConnectionError(f"Redis at {self.url} failed during the call: {exc}") from exc
        finally:
            self._slots.release()

    @staticmethod
    def _send_and_read(
        connection: redis.Connection, commands: list[tuple[Any, ...]], deadline: float
    ) -> list[Any]:
        send_commands_sync(connection, commands)
        responses = []
        for index in range(len(commands)):
            remaining = deadline - time.monotonic()
            grace = READ_GRACE if index == len(commands) - 1 else 0.0
            responses.append(connection.read_response(timeout=max(remaining, 0.001) + grace))
        return responses


class Batch(BatchHandle):
    """Calls and notifications sent as one JSON-RPC batch, in one message.

    >>> with client.batch("calculator") as batch:
    ...     total = batch.add(1, 2)
    ...     batch.notify.log("adding")
    >>> total.result()
    3
    """

    _client: Client

    def send(self) -> list[Any]:
        """Send the batch; return each call's result (or RpcError) in call order."""
        builder = self.builder
        if not self._expects_reply():
            self._client._notify(builder.service, self._queue, builder.requests, self._timeout)
            return []
        reply = self._client._roundtrip(
            builder.service, "batch", self._queue, builder.requests, self._timeout
        )
        return builder.resolve(reply)

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None and not self.builder.sent:
            self.send()
