"""A Service: a named set of plain functions, the methods a worker serves, and the
handlers it runs for events (``subscribe`` for pub/sub, ``on`` for durable events).

A Service only registers; how a request or an event reaches a function is the worker's
business (``worker/``), so a service module imports nothing of the worker.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from . import protocol
from .errors import RpcError
from .importing import import_user_module
from .validation import require_pydantic

F = TypeVar("F", bound=Callable[..., Any])


# What ``@service.method(errors=...)`` takes: RpcError classes or instances, for discovery.
DeclaredErrors = Iterable[type[RpcError] | RpcError]


@dataclass(frozen=True, slots=True)
class Method:
    """One method as registered: its wire name, its function, its own time limit,
    whether its params are checked against its type hints, and the errors it declares."""

    name: str
    func: Callable[..., Any]
    time_limit: float | None
    is_async: bool
    params: ParamsShape
    validate: bool = False
    errors: tuple[RpcError, ...] = ()
    # A generator (or async generator) streams its items: called as a stream, never plainly.
    streams: bool = False
    is_async_generator: bool = False


@dataclass(frozen=True, slots=True)
class Subscription:
    """A pub/sub handler: run for each message on ``channel``, or on every channel that
    matches ``pattern`` (a Redis glob), at most once per worker that subscribes."""

    channel: str | None
    pattern: str | None
    handler: Method


@dataclass(frozen=True, slots=True)
class Consumer:
    """A durable-event handler: run for each event emitted on ``topic``, at least once
    per service (the service's workers share its consumer group)."""

    topic: str
    handler: Method


class Service:
    """A named set of methods served from one Redis list.

    >>> service = Service("calculator")
    >>> @service.method
    ... def add(a: float, b: float) -> float:
    ...     return a + b
    """

    def __init__(
        self,
        name: str,
        *,
        queue: str | None = None,
        reliable: bool = False,
        validate: bool = False,
        version: str = "0.0.0",
        description: str | None = None,
    ) -> None:
        """``reliable=True``: recover this service's requests from workers that die
        mid-call (at-least-once delivery; for idempotent methods, see docs/reliability.md).
        ``validate=True``: check and convert every method's params against its type
        hints (needs pydantic; see rpc_redis/validation.py). ``version`` and
        ``description`` are what ``rpc.discover`` says of the service."""
        if not name:
            raise ValueError("a service needs a name")
        if validate:
            require_pydantic(f"service {name!r}")
        self.name = name
        self.queue = queue
        self.reliable = reliable
        self.validate = validate
        self.version = version
        self.description = description
        self.methods: dict[str, Method] = {}
        self.subscriptions: list[Subscription] = []
        self.consumers: dict[str, Consumer] = {}  # topic -> its one handler here

    def __repr__(self) -> str:
        return f"Service({self.name!r}, methods={sorted(self.methods)})"

    @property
    def handles_events(self) -> bool:
        return bool(self.subscriptions or self.consumers)

    @property
    def functions(self) -> dict[str, Callable[..., Any]]:
        """Wire name -> the function registered under it."""
        return {name: method.func for name, method in self.methods.items()}

    def queue_key(self, prefix: str = protocol.DEFAULT_PREFIX) -> str:
        """The list this service is served from: ``queue`` if given, else derived from the name."""
        return self.queue or protocol.queue_key(self.name, prefix)

    @property
    def has_plain_functions(self) -> bool:
        return any(not method.is_async for method in self.methods.values())

    @overload
    def method(
        self,
        func: F,
        *,
        name: str | None = None,
        time_limit: float | None = None,
        validate: bool | None = None,
        errors: DeclaredErrors = (),
    ) -> F: ...

    @overload
    def method(
        self,
        func: None = None,
        *,
        name: str | None = None,
        time_limit: float | None = None,
        validate: bool | None = None,
        errors: DeclaredErrors = (),
    ) -> Callable[[F], F]: ...

    def method(
        self,
        func: F | None = None,
        *,
        name: str | None = None,
        time_limit: float | None = None,
        validate: bool | None = None,
        errors: DeclaredErrors = (),
    ) -> F | Callable[[F], F]:
        """Expose a function (sync or async) as a method.

        ``name`` renames it on the wire; ``time_limit`` (seconds) overrides the worker's;
        ``validate`` overrides the service's; ``errors`` (RpcError classes or instances)
        are the application errors ``rpc.discover`` lists for it.
        """
        _check_time_limit(time_limit)
        validated = self.validate if validate is None else validate
        declared = tuple(error() if isinstance(error, type) else error for error in errors)

        def register(func: F) -> F:
            method_name = name or func.__name__
            if method_name.startswith("rpc."):
                raise ValueError("JSON-RPC reserves method names that start with 'rpc.'")
            if method_name in self.methods:
                raise ValueError(f"{self.name} already has a method named {method_name!r}")
            if validated:
                require_pydantic(f"{self.name}.{method_name}")
            is_async_generator = inspect.isasyncgenfunction(func)
            self.methods[method_name] = Method(
                method_name,
                func,
                time_limit,
                inspect.iscoroutinefunction(func) or is_async_generator,
                ParamsShape(func),
                validated,
                declared,
                streams=is_async_generator or inspect.isgeneratorfunction(func),
                is_async_generator=is_async_generator,
            )
            return func

        return register(func) if func is not None else register

    def subscribe(
        self,
        channel: str | None = None,
        *,
        pattern: str | None = None,
        time_limit: float | None = None,
    ) -> Callable[[F], F]:
        """Run the function (sync or async) for each message published on ``channel``,
        or on any channel matching ``pattern`` (``"sms.*"``); it takes the message's
        data as its one argument. At most once: what is published while no worker of
        this service listens is lost (docs/events.md)."""
        if (channel is None) == (pattern is None):
            raise ValueError("subscribe to a channel or a pattern: give exactly one")
        _check_name("channel" if pattern is None else "pattern", channel or pattern)
        _check_time_limit(time_limit)

        def register(func: F) -> F:
            handler = _event_handler(func, time_limit)
            self.subscriptions.append(Subscription(channel, pattern, handler))
            return func

        return register

    def on(self, topic: str, *, time_limit: float | None = None) -> Callable[[F], F]:
        """Run the function (sync or async) for each durable event emitted on ``topic``;
        it takes the event's data as its one argument. At least once: an event is
        acknowledged after the function returns, and handled again if it raised or its
        worker died (``current_call().delivery_count`` says how often it came)."""
        _check_name("topic", topic)
        _check_time_limit(time_limit)
        if "{" in topic or "}" in topic:
            raise ValueError("a topic's name is its stream's hash tag: no braces in it")
        if topic in self.consumers:
            raise ValueError(f"{self.name} already has a handler for the topic {topic!r}")

        def register(func: F) -> F:
            self.consumers[topic] = Consumer(topic, _event_handler(func, time_limit))
            return func

        return register


def _check_name(what: str, name: str | None) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a {what} must be a non-empty string, not {name!r}")


def _check_time_limit(time_limit: float | None) -> None:
    if time_limit is not None and time_limit <= 0:
        raise ValueError("time_limit must be a positive number of seconds")


def _event_handler(func: Callable[..., Any], time_limit: float | None) -> Method:
    """An event handler as a Method (so the worker runs it as it runs methods), checked
    now: it must take the event's data as its one positional argument."""
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise ValueError(f"an event handler cannot be a generator: {func.__qualname__}")
    try:
        inspect.signature(func).bind(None)
    except TypeError:
        raise ValueError(
            f"an event handler takes the event's data as its one argument: {func.__qualname__}"
        ) from None
    return Method(
        func.__name__, func, time_limit, inspect.iscoroutinefunction(func), ParamsShape(func)
    )


class ParamsShape:
    """The params a function surely accepts, told apart in well under a microsecond.

    Only the common shape is vouched for: parameters that may be given by position or
    by name, without ``*args``, ``**kwargs`` or keyword-only ones. For any other
    function, or params that do not fit, :meth:`fits` says False and jsonrpcserver's
    full check decides.
    """

    def __init__(self, func: Callable[..., Any]) -> None:
        parameters = list(inspect.signature(func).parameters.values())
        self.simple = all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters)
        self.names = frozenset(p.name for p in parameters)
        self.required = frozenset(p.name for p in parameters if p.default is p.empty)
        self.most = len(parameters)
        self.least = len(self.required)  # those without a default come first

    def fits(self, params: Any) -> bool:
        if not self.simple:
            return False
        if type(params) is list:
            return self.least <= len(params) <= self.most
        if type(params) is dict:
            return self.required <= params.keys() <= self.names
        return False


# -- finding services ---------------------------------------------------------------


def load_services(target: str) -> list[Service]:
    """Import ``MODULE[:ATTR]`` and return the Service it names, or every Service in it.

    The current directory is importable, as with uvicorn and celery, so
    ``services.calculator`` works from a project's root.
    """
    module_name, _, attribute = target.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    module = import_user_module(module_name)
    if attribute:
        found = getattr(module, attribute, None)
        if not isinstance(found, Service):
            raise LookupError(f"{target} is not a Service (found {type(found).__name__})")
        return [found]
    services = [value for value in vars(module).values() if isinstance(value, Service)]
    if not services:
        raise LookupError(f"module {module_name} defines no Service")
    return services
