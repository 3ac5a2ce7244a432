"""Proxies, shared by the sync and the async client.

A proxy only turns attribute access into (method, params); the client it was made by
decides whether a call blocks or returns an awaitable, so neither is written twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .. import protocol
from ..connection import resolve
from ..middleware import Middleware
from .policy import CallSettings, new_client_name

Params = list[Any] | dict[str, Any]
Caller = Callable[[str, Params], Any]


class MethodProxy:
    """One remote method; calling it makes the remote call. Its attributes are the
    methods below it in a dotted name: ``proxy.math.add(1, 2)`` calls ``math.add``."""

    __slots__ = ("_caller", "_name")

    def __init__(self, caller: Caller, name: str) -> None:
        self._caller = caller
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._caller(self._name, protocol.params_from(args, kwargs))

    def __getattr__(self, name: str) -> MethodProxy:
        if name.startswith("_"):
            raise AttributeError(name)
        return MethodProxy(self._caller, f"{self._name}.{name}")

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
    """A remote service: ``proxy.add(1, 2)`` calls, ``proxy.notify.log("x")`` notifies,
    ``proxy.stream.kittens(5)`` iterates a generator method's items as they come."""

    def __init__(self, service: str, caller: Caller, notifier: Caller, streamer: Caller) -> None:
        super().__init__(caller, f"proxy for service {service!r}")
        self.notify = MethodNamespace(notifier, f"notifications to service {service!r}")
        self.stream = MethodNamespace(streamer, f"streams from service {service!r}")


class ProxyMaker:
    """What the sync and async clients share: their settings, and proxies made from
    their own I/O."""

    def __init__(
        self,
        url: str | None,
        prefix: str,
        timeout: float,
        middleware: Sequence[Middleware],
        redis_options: dict[str, Any],
        redis_object: Any = None,
    ) -> None:
        self.target = resolve(url, redis_object)
        self.settings = CallSettings(self.target, prefix, timeout, middleware)
        self.url = self.target.location.url
        self._hooks = self.settings.hooks
        # Named, so its connections can be told apart in CLIENT LIST.
        redis_options.setdefault("client_name", new_client_name())
        self.client_name: str = redis_options["client_name"]

    def _call(self, service: str, queue: str, method: str, params: Params, timeout: float) -> Any:
        raise NotImplementedError

    def _notify(self, service: str, queue: str, payload: Any, timeout: float) -> Any:
        raise NotImplementedError

    def _stream(self, service: str, queue: str, method: str, params: Params, timeout: float) -> Any:
        raise NotImplementedError

    def proxy(
        self, service: str, *, timeout: float | None = None, queue: str | None = None
    ) -> ServiceProxy:
        """A proxy whose attributes are the service's methods (awaitable on an AsyncClient).
        ``timeout`` None means the client's."""
        queue_key = self.settings.queue_for(service, queue)
        call_timeout = self.settings.timeout_for(timeout)

        def call(method: str, params: Params) -> Any:
            return self._call(service, queue_key, method, params, call_timeout)

        def notify(method: str, params: Params) -> Any:
            payload = protocol.notification_object(method, params)
            return self._notify(service, queue_key, payload, call_timeout)

        def stream(method: str, params: Params) -> Any:
            return self._stream(service, queue_key, method, params, call_timeout)

        return ServiceProxy(service, call, notify, stream)
