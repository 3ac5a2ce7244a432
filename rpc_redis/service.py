"""A Service: a named set of plain functions, and their dispatch through jsonrpcserver."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import importlib
import inspect
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from jsonrpcserver import JsonRpcError, Success, async_dispatcher, dispatcher
from jsonrpcserver.dispatcher import create_request, to_response
from jsonrpcserver.request import Request
from jsonrpcserver.response import to_serializable_one
from jsonrpcserver.result import Result
from jsonrpcserver.sentinels import NODATA, NOID

from . import protocol
from .errors import INTERNAL_ERROR, SERVER_ERROR, TIME_LIMIT_EXCEEDED, InvalidRequest, RpcError
from .threads import HandlerThreads, TimeLimitReached

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

logger = logging.getLogger("rpc_redis.service")


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler may ask about the call it is serving."""

    service: str
    method: str
    deadline: float | None
    debug: bool = False
    time_limit: float | None = None
    # Where plain functions run when they must leave the caller's thread; None: inline.
    threads: HandlerThreads | None = None

    def remaining(self) -> float | None:
        """Seconds until the caller stops waiting, or None if it set no deadline."""
        return None if self.deadline is None else self.deadline - time.time()


_current_call: contextvars.ContextVar[CallContext] = contextvars.ContextVar("rpc_redis_call")


def current_call() -> CallContext | None:
    """The call being served by this handler, or None outside a handler."""
    return _current_call.get(None)


class Service:
    """A named set of methods served from one Redis list.

    >>> service = Service("calculator")
    >>> @service.method
    ... def add(a: float, b: float) -> float:
    ...     return a + b
    """

    def __init__(self, name: str, *, queue: str | None = None, reliable: bool = False) -> None:
        """``reliable=True``: recover this service's requests from workers that die
        mid-call (at-least-once delivery; for idempotent methods, see docs/reliability.md)."""
        if not name:
            raise ValueError("a service needs a name")
        self.name = name
        self.queue = queue
        self.reliable = reliable
        self.functions: dict[str, Callable[..., Any]] = {}
        self._methods: dict[str, Callable[..., Any]] = {}  # for the event loop
        self._plain_methods: dict[str, Callable[..., Any]] = {}  # for a thread, plain only
        self._params_shapes: dict[str, ParamsShape] = {}

    def __repr__(self) -> str:
        return f"Service({self.name!r}, methods={sorted(self.functions)})"

    def queue_key(self, prefix: str = protocol.DEFAULT_PREFIX) -> str:
        """The list this service is served from: ``queue`` if given, else derived from the name."""
        return self.queue or protocol.queue_key(self.name, prefix)

    @property
    def has_plain_functions(self) -> bool:
        return bool(self._plain_methods)

    @overload
    def method(self, func: F, *, name: str | None = None, time_limit: float | None = None) -> F: ...

    @overload
    def method(
        self, func: None = None, *, name: str | None = None, time_limit: float | None = None
    ) -> Callable[[F], F]: ...

    def method(
        self, func: F | None = None, *, name: str | None = None, time_limit: float | None = None
    ) -> F | Callable[[F], F]:
        """Expose a function (sync or async) as a method.

        ``name`` renames it on the wire; ``time_limit`` (seconds) overrides the worker's.
        """
        if time_limit is not None and time_limit <= 0:
            raise ValueError("time_limit must be a positive number of seconds")

        def register(func: F) -> F:
            method_name = name or func.__name__
            if method_name.startswith("rpc."):
                raise ValueError("JSON-RPC reserves method names that start with 'rpc.'")
            if method_name in self.functions:
                raise ValueError(f"{self.name} already has a method named {method_name!r}")
            self.functions[method_name] = func
            handler = Handler(func, self.name, method_name, time_limit)
            self._methods[method_name] = handler.for_event_loop()
            self._params_shapes[method_name] = ParamsShape(func)
            if not handler.is_async:
                self._plain_methods[method_name] = handler.for_thread()
            return func

        return register(func) if func is not None else register

    def dispatches_in_thread(self, payload: Any) -> bool:
        """Whether :meth:`dispatch_in_thread` can serve this payload: one request that
        does not name an ``async def`` method (an unknown or invalid one is answered)."""
        if not isinstance(payload, dict):
            return False
        method = payload.get("method")
        if not isinstance(method, str):
            return True  # an invalid request, answered as such
        return method in self._plain_methods or method not in self._methods

    def dispatch_in_thread(
        self,
        request: Any,
        *,
        deadline: float | None = None,
        debug: bool = False,
        time_limit: float | None = None,
        threads: HandlerThreads | None = None,
    ) -> Any:
        """Serve one request on this thread (see :meth:`dispatches_in_thread`): its
        response, or None for a notification. A plain function runs here, unless it has
        a time limit, in which case it runs on ``threads`` for at most that long."""
        context = self._context(request, deadline, debug, time_limit, threads)
        if not isinstance(context, CallContext):
            return context
        parsed = create_request(request)
        method = self._method_if_params_fit(self._plain_methods, parsed)
        try:
            if method is not None:
                result = dispatcher.call(parsed, context, method)
            else:
                _, result = dispatcher.dispatch_request(self._plain_methods, context, parsed)
        except Exception as exc:
            return self._dispatcher_fault(request, exc)
        return self._response(parsed, result)

    async def dispatch(
        self,
        payload: Any,
        *,
        deadline: float | None = None,
        debug: bool = False,
        time_limit: float | None = None,
        threads: HandlerThreads | None = None,
    ) -> Any:
        """Serve a request or a batch: the response(s) to send, or None if none are due.

        ``time_limit`` applies to methods that set none of their own. Plain functions
        run on ``threads`` (inline if None), so that the event loop keeps serving.
        """
        options = (deadline, debug, time_limit, threads)
        if isinstance(payload, list):
            if not payload:
                return protocol.error_response(None, InvalidRequest(data="empty batch"))
            responses = await asyncio.gather(
                *(self._dispatch_one(item, *options) for item in payload)
            )
            return [response for response in responses if response is not None] or None
        return await self._dispatch_one(payload, *options)

    async def _dispatch_one(
        self,
        request: Any,
        deadline: float | None,
        debug: bool,
        time_limit: float | None,
        threads: HandlerThreads | None,
    ) -> Any:
        context = self._context(request, deadline, debug, time_limit, threads)
        if not isinstance(context, CallContext):
            return context
        # jsonrpcserver's own steps (method lookup, params check, call), for one request:
        # its dispatch_to_response_pure would wrap even one in asyncio.gather, a task
        # and several passes of the event loop per call.
        parsed = create_request(request)
        method = self._method_if_params_fit(self._methods, parsed)
        try:
            if method is not None:
                result = await async_dispatcher.call(parsed, context, method)
            else:
                _, result = await async_dispatcher.dispatch_request(self._methods, context, parsed)
        except Exception as exc:
            return self._dispatcher_fault(request, exc)
        return self._response(parsed, result)

    def _context(
        self,
        request: Any,
        deadline: float | None,
        debug: bool,
        time_limit: float | None,
        threads: HandlerThreads | None,
    ) -> CallContext | dict[str, Any]:
        """The context to serve a valid request in, or the error response of an invalid one."""
        problem = protocol.request_problem(request)
        if problem is not None:
            request_id = request.get("id") if isinstance(request, dict) else None
            request_id = request_id if protocol.is_valid_id(request_id) else None
            return protocol.error_response(request_id, InvalidRequest(data=problem))
        return CallContext(self.name, request["method"], deadline, debug, time_limit, threads)

    def _method_if_params_fit(
        self, methods: dict[str, Callable[..., Any]], parsed: Request
    ) -> Callable[..., Any] | None:
        """The method to call at once, if the request's params surely fit it; else None,
        and jsonrpcserver checks them (and answers what does not fit). Its own check
        binds the whole signature on every call: a fifth of a call's time in the worker."""
        shape = self._params_shapes.get(parsed.method)
        if shape is None or not shape.fits(parsed.params):
            return None
        return methods.get(parsed.method)

    def _dispatcher_fault(self, request: Any, exc: Exception) -> dict[str, Any]:
        """A fault in the dispatcher itself, not in a handler: answered, and logged."""
        logger.exception("dispatching %s.%s failed", self.name, request["method"])
        error = RpcError("Server error", str(exc), code=SERVER_ERROR)
        return protocol.error_response(request.get("id"), error)

    @staticmethod
    def _response(parsed: Request, result: Result) -> Any:
        if parsed.id is NOID:
            return None  # a notification
        return to_serializable_one(to_response(parsed, result))


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


class Handler:
    """A plain function adapted as a jsonrpcserver method: context first, Result out.

    The adapted methods keep the function's signature (plus the context), so
    jsonrpcserver's own check of the params yields -32602 before the function runs.
    """

    def __init__(
        self, func: Callable[..., Any], service: str, method: str, time_limit: float | None
    ) -> None:
        self.func = func
        self.service = service
        self.method = method
        self.time_limit = time_limit
        self.is_async = inspect.iscoroutinefunction(func)

    def for_event_loop(self) -> Callable[..., Any]:
        async def call(context: CallContext, *args: Any, **kwargs: Any) -> Any:
            token = _current_call.set(context)
            limit = self._limit(context)
            try:
                with self._errors_mapped(context, limit):
                    if self.is_async:
                        running = self.func(*args, **kwargs)
                    elif context.threads is not None:
                        running = context.threads.run(self._bound(args, kwargs))
                    else:
                        running = _completed(self.func(*args, **kwargs))
                    value = await (running if limit is None else _within(running, limit))
            finally:
                _current_call.reset(token)
            return Success(value)

        return self._signed(call)

    def for_thread(self) -> Callable[..., Any]:
        assert not self.is_async

        def call(context: CallContext, *args: Any, **kwargs: Any) -> Any:
            token = _current_call.set(context)
            limit = self._limit(context)
            try:
                with self._errors_mapped(context, limit):
                    if limit is None or context.threads is None:
                        value = self.func(*args, **kwargs)
                    else:
                        value = context.threads.run_within(self._bound(args, kwargs), limit)
            finally:
                _current_call.reset(token)
            return Success(value)

        return self._signed(call)

    def _limit(self, context: CallContext) -> float | None:
        return self.time_limit if self.time_limit is not None else context.time_limit

    def _bound(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[[], Any]:
        """The call, to run on another thread in this one's context (current_call...)."""
        return functools.partial(contextvars.copy_context().run, self.func, *args, **kwargs)

    @contextlib.contextmanager
    def _errors_mapped(self, context: CallContext, limit: float | None) -> Iterator[None]:
        """Turn what a handler raises into the JSON-RPC error its caller gets."""
        try:
            yield
        except TimeLimitReached:
            logger.error("%s.%s ran past its time limit of %ss", self.service, self.method, limit)
            raise JsonRpcError(
                TIME_LIMIT_EXCEEDED, "Time limit exceeded", {"limit": limit}
            ) from None
        except RpcError as exc:
            data = NODATA if exc.data is None else exc.data
            raise JsonRpcError(exc.code, exc.message, data) from exc
        except Exception as exc:
            logger.error("%s.%s raised %s: %s", self.service, self.method, type(exc).__name__, exc)
            data = protocol.exception_data(exc, with_traceback=context.debug)
            raise JsonRpcError(INTERNAL_ERROR, "Internal error", data) from exc

    def _signed(self, call: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(self.func)
        context_parameter = inspect.Parameter("__context", inspect.Parameter.POSITIONAL_ONLY)
        call.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[context_parameter, *signature.parameters.values()]
        )
        call.__name__ = self.method
        call.__doc__ = self.func.__doc__
        return call


async def _completed(value: T) -> T:
    return value


async def _within(running: Awaitable[T], limit: float) -> T:
    """Await a handler, giving up after ``limit`` seconds.

    An async handler is cancelled. A plain function's thread cannot be stopped: it runs
    on, but its slot is freed and its caller answered.
    """
    task = asyncio.ensure_future(running)
    done, _ = await asyncio.wait({task}, timeout=limit)
    if not done:
        task.cancel()
        raise TimeLimitReached
    return task.result()


# -- finding services ---------------------------------------------------------------


def load_services(target: str) -> list[Service]:
    """Import ``MODULE[:ATTR]`` and return the Service it names, or every Service in it.

    The current directory is importable, as with uvicorn and celery, so
    ``services.calculator`` works from a project's root.
    """
    module_name, _, attribute = target.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    module = importlib.import_module(module_name)
    if attribute:
        found = getattr(module, attribute, None)
        if not isinstance(found, Service):
            raise LookupError(f"{target} is not a Service (found {type(found).__name__})")
        return [found]
    services = [value for value in vars(module).values() if isinstance(value, Service)]
    if not services:
        raise LookupError(f"module {module_name} defines no Service")
    return services
