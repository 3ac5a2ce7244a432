"""Proxies and batches, shared by the sync and the async client.

A proxy only turns attribute access into (method, params); the client it was made by
decides whether a call blocks or returns an awaitable, so neither is written twice.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .. import protocol
from ..errors import InternalError, RpcError

Params = list[Any] | dict[str, Any]
Caller = Callable[[str, Params], Any]


class MethodProxy:
    """One remote method; calling it makes the remote call."""

    __slots__ = ("_caller", "_name")

    def __init__(self, caller: Caller, name: str) -> None:
        self._caller = caller
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._caller(self._name, protocol.params_from(args, kwargs))

    def __repr__(self) -> str:
        return f"<remote method {self._name}>"


class MethodNamespace:
    """Attribute access gives a :class:`MethodProxy`; ``call`` takes any method name."""

    def __init__(self, caller: Caller, description: str) -> None:
        self._caller = caller
        self._description = description

    def __getattr__(self, name: str) -> MethodProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        return MethodProxy(self._caller, name)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a method whose name is not a Python identifier, e.g. ``"math.add"``."""
        return self._caller(method, protocol.params_from(args, kwargs))

    def __repr__(self) -> str:
        return f"<{self._description}>"


class ServiceProxy(MethodNamespace):
    """A remote service: ``proxy.add(1, 2)`` calls, ``proxy.notify.log("x")`` notifies."""

    def __init__(self, service: str, caller: Caller, notifier: Caller) -> None:
        super().__init__(caller, f"proxy for service {service!r}")
        self.notify = MethodNamespace(notifier, f"notifications to service {service!r}")


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
        try:
            outcomes = protocol.outcomes_by_id(reply)
        except RpcError as whole_batch_error:  # e.g. the batch was too large
            outcomes = dict.fromkeys(
                (result.request_id for result in self.results), whole_batch_error
            )
        for result in self.results:
            missing = InternalError("Batch reply has no response for this call", result.request_id)
            result.set_outcome(outcomes.get(result.request_id, missing))
        return [result._outcome for result in self.results]


class BatchHandle:
    """What the sync and async batches share: collecting calls, and checking before sending.

    ``client`` is the client the batch will be sent by; its ``settings`` give the timeout.
    """

    def __init__(self, client: Any, service: str, queue: str, timeout: float | None) -> None:
        self._client = client
        self._queue = queue
        self._timeout = timeout or client.settings.timeout
        self.builder = BatchBuilder(service, new_request_id)
        self.notify = self.builder.notify

    def __getattr__(self, name: str) -> Any:
        return getattr(self.builder, name)

    def call(self, method: str, *args: Any, **kwargs: Any) -> BatchResult:
        return self.builder.call(method, *args, **kwargs)

    def _expects_reply(self) -> bool:
        """Whether sending waits for a reply; an empty batch is refused, a batch of only
        notifications is marked sent (nothing will come back to resolve it)."""
        if not self.builder.requests:
            raise ValueError("an empty batch cannot be sent")
        if not self.builder.expects_reply:
            self.builder.sent = True
            return False
        return True


def new_request_id() -> str:
    """A request id unique across clients: the AsyncClient routes replies by it."""
    return unique_hex()


def unique_hex() -> str:
    """32 random hex digits, unique across clients and (forked) processes. os.urandom
    costs a quarter of uuid4, and a sync call needs two: its id and its reply key."""
    return os.urandom(16).hex()
