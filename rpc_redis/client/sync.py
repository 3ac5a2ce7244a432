"""The sync Client: call remote methods as if they were local functions.

Each call pushes its envelope and blocks on its own reply key in one round trip
(RPUSH and BLPOP pipelined on one pooled connection; on a cluster, the reply key is in
the queue's hash slot, so both go to one node). Every read is bounded by the call's
remaining time, so no call outlives its timeout, even if Redis goes away. A redirection
(MOVED, ASK) is followed, never surfaced; under Sentinel or Cluster, the wait for a
reply already pushed rides out the primary's failover. The rules (timeouts, errors,
middleware) are policy.py's, shared with the AsyncClient.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
import redis.retry
from redis.backoff import NoBackoff

from .. import protocol
from ..connection import (
    REDIS_ERRORS,
    command_key,
    read_responses_sync,
    read_within,
    redirect_of,
    send_commands_sync,
)
from ..connection.routes import MAX_REDIRECTS
from ..errors import REDIS_FAILURES, RpcTimeout
from ..events import streams, wire
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
    event_command,
    event_outcome,
    new_request_id,
)
from .proxy import Params, ProxyMaker
from .streams import Stream, StreamCall

# How long past a call's timeout a read may wait for Redis's own BLPOP timeout reply.
READ_GRACE = 0.25
# While a failover is under way, how long between attempts to wait on the new primary.
FAILOVER_RETRY_SECONDS = 0.1


class _Unsent(Exception):
    """Redis was lost where sending ``commands`` again is safe: before they were sent,
    or, once the push was answered (``pushed``), during the wait for the reply."""

    def __init__(self, error: BaseException, commands: list[tuple[Any, ...]], pushed: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.commands = commands
        self.pushed = pushed


class Client(ProxyMaker):
    """A thread-safe client holding at most ``max_connections`` Redis connections.

    >>> client = Client("redis://localhost:6379/0", timeout=5.0)
    >>> calc = client.proxy("calculator")
    >>> calc.add(1, 2)
    3

    ``url`` is any form docs/deployment.md lists (TLS, unix socket, Sentinel, Cluster);
    for what no URL says, ``redis=`` takes a ``redis.Redis``, ``redis.RedisCluster`` or
    connection pool you built, used as it is.
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
        # No retries of redis-py's own (3.7 s against a refused port): the call's
        # deadline bounds every attempt, and rides out a failover itself.
        redis_options.setdefault("retry", no_retries())
        super().__init__(url, prefix, timeout, middleware, redis_options, redis)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._routes = self.target.sync_routes(
            shared=True,
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

    def publish(self, channel: str, data: Any, *, timeout: float | None = None) -> int:
        """Publish an event to the workers subscribed to ``channel`` now: how many
        received it. At most once: 0 means nobody listened, and the event is gone."""
        return int(self._event("publish", channel, data, timeout, wire.DEFAULT_STREAM_MAXLEN))

    def emit(
        self,
        topic: str,
        data: Any,
        *,
        maxlen: int = wire.DEFAULT_STREAM_MAXLEN,
        timeout: float | None = None,
    ) -> str:
        """Append a durable event to ``topic``'s stream, trimmed to about ``maxlen``
        events: its id there. Every service that consumes the topic handles it."""
        return str(self._event("emit", topic, data, timeout, maxlen))

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
    ) -> Stream:
        """Call a generator method and iterate its items as they come: ``timeout`` bounds
        each wait (for the first item and between items), ``total_timeout`` the whole
        stream; ``window`` items at most wait in Redis for this caller. Stopping early
        (break, ``close()``, the ``with`` block's end) ends the generator on the worker."""
        call = StreamCall.of(
            self.settings, service, method, params, queue, timeout, total_timeout, window
        )
        return Stream(call, self._hooks, self._exchange)

    def close(self) -> None:
        self._routes.disconnect()
        self.target.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- calls -----------------------------------------------------------------------

    def _call(self, service: str, queue: str, method: str, params: Params, timeout: float) -> Any:
        request = protocol.request_object(method, params, new_request_id())
        return self._roundtrip(service, method, queue, request, timeout, answer)

    def _stream(
        self, service: str, queue: str, method: str, params: Params, timeout: float
    ) -> Stream:
        return self.stream(service, method, params, timeout=timeout, queue=queue)

    def _event(self, method: str, name: str, data: Any, timeout: float | None, maxlen: int) -> Any:
        """Publish or emit, with the middleware around it."""
        timeout = effective_timeout(self.settings.timeout_for(timeout))
        prefix = self.settings.prefix
        if self._hooks is None:
            command = event_command(method, name, data, None, prefix, maxlen)
            return event_outcome(self._exchange([command], name, method, command[1], timeout)[-1])
        with self._hooks.before_event(method, name, data) as outgoing:
            command = event_command(method, name, data, outgoing.meta, prefix, maxlen)
            responses = self._exchange([command], name, method, command[1], timeout)
            outgoing.outcome = event_outcome(responses[-1])
        return outgoing.outcome

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
        reply_to = self.settings.new_reply_key(queue)
        message = protocol.encode_envelope(payload, reply_to, deadline, meta)
        commands = [("RPUSH", queue, message), ("BLPOP", reply_to, blpop_timeout(timeout))]
        popped = self._exchange(commands, service, method, queue, timeout)[-1]
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
    ) -> list[Any]:
        """Send commands in one write on one pooled connection of the queue's node; read
        every response in time, and return them. Whatever fails is raised as policy maps it."""
        deadline = time.monotonic() + timeout
        if not self._slots.acquire(timeout=timeout):
            raise RpcTimeout(service, method, timeout)
        try:
            try:
                return self._exchange_routed(commands, deadline)
            except _Unsent as unsent:
                lost = unsent
            # Raised here, not in the handler: its context (a TLS error...) stays its own.
            if not self.settings.waits_through_failover(lost.error):
                self._refresh_quietly()  # the next call goes where the cluster says
                raise lost.error
            return self._through_failover(lost, deadline)
        except REDIS_FAILURES as exc:
            raise self.settings.exchange_error(exc, service, method, timeout, queue) from exc
        finally:
            self._slots.release()

    def _exchange_routed(
        self, commands: list[tuple[Any, ...]], deadline: float, pushed: bool = False
    ) -> list[Any]:
        """:meth:`_attempt` on the key's node, following redirections: a push refused by
        MOVED or ASK goes again with its wait; a wait redirected after the push, alone
        (the responses are then those of what went again: the last ones stay last)."""
        routes = self._routes
        pool = routes.single or routes.pool_for(command_key(commands[0]))  # no hashing on one
        asking = False
        failed: Exception | None = None
        for _ in range(MAX_REDIRECTS + 1):
            responses = self._attempt(pool, commands, asking, deadline, pushed)
            failed = next((r for r in responses if isinstance(r, Exception)), None)
            if failed is None:
                return responses
            redirect = redirect_of(failed)
            if redirect is None:
                raise failed
            done = responses.index(failed)
            pushed = pushed or done > 0
            commands = [with_time_left(c, deadline) for c in commands[done:]]
            pool = self._routes.follow(redirect, command_key(commands[0]))
            asking = redirect.asking
        assert failed is not None
        raise failed

    def _attempt(
        self,
        pool: redis.ConnectionPool,
        commands: list[tuple[Any, ...]],
        asking: bool,
        deadline: float,
        pushed: bool,
    ) -> list[Any]:
        """Send the commands on one connection of ``pool`` and read their responses (error
        replies as values); an error reply ends the reading at once, so a wait behind a
        refused push is not waited out. A connection left half-read is closed."""
        lender = self._routes.lender(pool)
        try:
            connection = lender.lend()
        except REDIS_ERRORS as exc:  # not connected: nothing was sent
            raise _Unsent(exc, commands, pushed) from exc
        complete = False
        try:
            sent = [("ASKING",), *commands] if asking else commands
            # Each step (the send, each read) waits no longer than the call's time left
            # and a grace past it, for Redis's own BLPOP timeout reply: the socket's
            # timeout, set only when it must change (redis-py's timeout per read sets it
            # and back, two system calls a read).
            read_within(connection, deadline, READ_GRACE)
            send_commands_sync(connection, sent)
            if asking:
                read_within(connection, deadline, READ_GRACE)
                read_responses_sync(connection, 1, None)
            responses: list[Any] = []
            for index in range(len(commands)):
                last = index == len(commands) - 1
                read_within(connection, deadline, READ_GRACE)
                try:
                    [response] = read_responses_sync(connection, 1, None)
                except REDIS_ERRORS as exc:
                    if last and (pushed or responses):  # the wait alone was lost
                        raise _Unsent(exc, commands[-1:], True) from exc
                    raise
                responses.append(response)
                if isinstance(response, Exception) and not last:
                    return responses
            complete = True
            return responses
        finally:
            if not complete:
                # Responses may be left unread: a connection is never handed out again
                # half-read.
                connection.disconnect()  # type: ignore[no-untyped-call]
            lender.give_back(connection)

    def _through_failover(self, unsent: _Unsent, deadline: float) -> list[Any]:
        """Send again what may be sent again (a push Redis never got; the wait for a reply
        whose push it answered) to the primary that replaces the lost one, until the
        call's deadline; the push replicated there is served, its reply written there."""
        error = unsent.error
        while time.monotonic() < deadline:
            time.sleep(min(FAILOVER_RETRY_SECONDS, max(deadline - time.monotonic(), 0)))
            self._refresh_quietly()
            commands = [with_time_left(command, deadline) for command in unsent.commands]
            try:
                return self._exchange_routed(commands, deadline, unsent.pushed)
            except _Unsent as again:
                unsent, error = again, again.error
        raise error

    def _refresh_quietly(self) -> None:
        """On a cluster, ask it again which node serves which slot (a node was lost)."""
        if self._routes.is_cluster:
            with contextlib.suppress(*REDIS_ERRORS, redis.exceptions.ResponseError):
                self._routes.refresh()


def no_retries() -> redis.retry.Retry:
    return redis.retry.Retry(NoBackoff(), 0)


def with_time_left(command: tuple[Any, ...], deadline: float) -> tuple[Any, ...]:
    """A BLPOP sent again blocks only for the call's time left; other commands as they are."""
    if command[0] != "BLPOP":
        return command
    return (*command[:-1], blpop_timeout(max(deadline - time.monotonic(), 0.001)))
