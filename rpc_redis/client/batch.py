"""Batches: many calls and notifications sent as one JSON-RPC batch, in one message.

The collecting is shared; sending is the client's: :class:`Batch` blocks on a
:class:`~rpc_redis.Client`, :class:`AsyncBatch` is awaited on an AsyncClient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import protocol
from .policy import batch_outcomes, new_request_id
from .proxy import MethodNamespace, MethodProxy, Params

_PENDING = object()


class BatchResult:
    """The outcome of one call in a batch, known once the batch has been sent."""

    __slots__ = ("_outcome", "method", "request_id")

    def __init__(self, method: str, request_id: Any) -> None:
        self.method = method
        self.request_id = request_id
        self._outcome: Any = _PENDING

    def done(self) -> bool:
        return self._outcome is not _PENDING

    def result(self) -> Any:
        """The call's result; raises its RpcError, or RuntimeError before the batch is sent."""
        if self._outcome is _PENDING:
            raise RuntimeError(f"the batch holding {self.method!r} has not been sent")
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self._outcome

    def set_outcome(self, outcome: Any) -> None:
        self._outcome = outcome


class BatchBuilder:
    """Collects calls and notifications to send as one JSON-RPC batch."""

    def __init__(self, service: str, new_id: Callable[[], str]) -> None:
        self.service = service
        self.requests: list[dict[str, Any]] = []
        self.results: list[BatchResult] = []
        self.sent = False
        self._new_id = new_id
        self.notify = MethodNamespace(self._add_notification, "batch notifications")

    def __getattr__(self, name: str) -> MethodProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        return MethodProxy(self._add_call, name)

    def call(self, method: str, *args: Any, **kwargs: Any) -> BatchResult:
        result: BatchResult = self._add_call(method, protocol.params_from(args, kwargs))
        return result

    def _add_call(self, method: str, params: Params) -> BatchResult:
        self._check_open()
        request_id = self._new_id()
        self.requests.append(protocol.request_object(method, params, request_id))
        result = BatchResult(method, request_id)
        self.results.append(result)
        return result

    def _add_notification(self, method: str, params: Params) -> None:
        self._check_open()
        self.requests.append(protocol.notification_object(method, params))

    def _check_open(self) -> None:
        if self.sent:
            raise RuntimeError("this batch has been sent; start a new one")

    @property
    def expects_reply(self) -> bool:
        return bool(self.results)

    def resolve(self, reply: Any) -> list[Any]:
        """Hand each call its outcome from the batch reply; return them in call order."""
        self.sent = True
        outcomes = batch_outcomes(reply, [result.request_id for result in self.results])
        for result, outcome in zip(self.results, outcomes, strict=True):
            result.set_outcome(outcome)
        return outcomes


class BatchHandle:
    """What the sync and async batches share: collecting calls, and checking before sending.

    The client hands a batch the two ways it sends (``roundtrip`` for a message that
    expects a reply, ``notify`` for one that does not) and the batch's timeout, resolved.
    """

    def __init__(
        self,
        roundtrip: Callable[..., Any],
        notify: Callable[..., Any],
        service: str,
        queue: str,
        timeout: float,
    ) -> None:
        self._roundtrip = roundtrip
        self._notify = notify
        self._queue = queue
        self._timeout = timeout
        self.builder = BatchBuilder(service, new_request_id)
        self.notify = self.builder.notify

    def __getattr__(self, name: str) -> Any:
        return getattr(self.builder, name)

    def call(self, method: str, *args: Any, **kwargs: Any) -> BatchResult:
        return self.builder.call(method, *args, **kwargs)

    def _finish(self, requests: Any, reply: Any) -> list[Any]:
        """The batch reply, resolved: a ``Finish`` for the client's round trip."""
        return self.builder.resolve(reply)

    def _expects_reply(self) -> bool:
        """Whether sending waits for a reply; an empty batch is refused, a batch of only
        notifications is marked sent (nothing will come back to resolve it)."""
        if not self.builder.requests:
            raise ValueError("an empty batch cannot be sent")
        if not self.builder.expects_reply:
            self.builder.sent = True
            return False
        return True


class Batch(BatchHandle):
    """Calls and notifications sent as one JSON-RPC batch, in one message.

    >>> with client.batch("calculator") as batch:
    ...     total = batch.add(1, 2)
    ...     batch.notify.log("adding")
    >>> total.result()
    3
    """

    def send(self) -> list[Any]:
        """Send the batch; return each call's result (or RpcError) in call order."""
        builder = self.builder
        if not self._expects_reply():
            self._notify(builder.service, self._queue, builder.requests, self._timeout)
            return []
        outcomes: list[Any] = self._roundtrip(
            builder.service, "batch", self._queue, builder.requests, self._timeout, self._finish
        )
        return outcomes

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None and not self.builder.sent:
            self.send()


class AsyncBatch(BatchHandle):
    """Calls and notifications sent as one JSON-RPC batch: ``async with client.batch(...)``."""

    async def send(self) -> list[Any]:
        """Send the batch; return each call's result (or RpcError) in call order."""
        builder = self.builder
        if not self._expects_reply():
            await self._notify(builder.service, self._queue, builder.requests, self._timeout)
            return []
        request_ids = [result.request_id for result in builder.results]
        outcomes: list[Any] = await self._roundtrip(
            builder.service,
            "batch",
            self._queue,
            builder.requests,
            request_ids,
            self._timeout,
            self._finish,
        )
        return outcomes

    async def __aenter__(self) -> AsyncBatch:
        return self

    async def __aexit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None and not self.builder.sent:
            await self.send()
