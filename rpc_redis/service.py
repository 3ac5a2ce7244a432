"""A Service: a named set of plain functions, and their dispatch through jsonrpcserver."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import importlib
import inspect
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from jsonrpcserver import JsonRpcError, Success
from jsonrpcserver.async_dispatcher import dispatch_request
from jsonrpcserver.dispatcher import create_request, to_response
from jsonrpcserver.response import to_serializable_one
from jsonrpcserver.sentinels import NODATA, NOID

from . import protocol
from .errors import INTERNAL_ERROR, SERVER_ERROR, TIME_LIMIT_EXCEEDED, InvalidRequest, RpcError

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

logger = logging.getLogger("rpc_redis.service")

RunSync = Callable[[Callable[[], Any]], Awaitable[Any]]


async def run_inline(func: Callable[[], T]) -> T:
    """Run a plain function on the event loop itself: for tests and tiny handlers."""
    return func()


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler may ask about the call it is serving."""

    service: str
    method: str
    deadline: float | None
    run_sync: RunSync = run_inline
    debug: bool = False
    time_limit: float | None = None

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
        self._methods: dict[str, Callable[..., Any]] = {}

    def __repr__(self) -> str:
        return f"Service({self.name!r}, methods={sorted(self.functions)})"

    def queue_key(self, prefix: str = protocol.DEFAULT_PREFIX) -> str:
        """The list this service is served from: ``queue`` if given, else derived from the name."""
        return self.queue or protocol.queue_key(self.name, prefix)

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
            self._methods[method_name] = _adapt(func, self.name, method_name, time_limit)
            return func

        return register(func) if func is not None else register

    async def dispatch(
        self,
        payload: Any,
        *,
        deadline: float | None = None,
        run_sync: RunSync = run_inline,
        debug: bool = False,
        time_limit: float | None = None,
    ) -> Any:
        """Serve a request or a batch: the response(s) to send, or None if none are due.

        ``time_limit`` applies to methods that set none of their own.
        """
        options = (deadline, run_sync, debug, time_limit)
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
        run_sync: RunSync,
        debug: bool,
        time_limit: float | None,
    ) -> Any:
        problem = protocol.request_problem(request)
        if problem is not None:
            request_id = request.get("id") if isinstance(request, dict) else None
            request_id = request_id if protocol.is_valid_id(request_id) else None
            return protocol.error_response(request_id, InvalidRequest(data=problem))
        context = CallContext(self.name, request["method"], deadline, run_sync, debug, time_limit)
        # jsonrpcserver's own steps (method lookup, params check, call), for one request:
        # its dispatch_to_response_pure would wrap even one in asyncio.gather, a task
        # and several passes of the event loop per call.
        parsed = create_request(request)
        try:
            _, result = await dispatch_request(self._methods, context, parsed)
        except Exception as exc:  # a fault in the dispatcher itself, not in a handler
            logger.exception("dispatching %s.%s failed", self.name, request["method"])
            error = RpcError("Server error", str(exc), code=SERVER_ERROR)
            return protocol.error_response(request.get("id"), error)
        if parsed.id is NOID:
            return None  # a notification
        return to_serializable_one(to_response(parsed, result))


def _adapt(
    func: Callable[..., Any], service: str, method: str, time_limit: float | None
) -> Callable[..., Any]:
    """Wrap a plain function as a jsonrpcserver method: context first, Result out.

    The wrapper keeps the function's signature (plus the context), so jsonrpcserver's
    own check of the params yields -32602 before the function runs.
    """
    is_async = inspect.iscoroutinefunction(func)

    async def call(context: CallContext, *args: Any, **kwargs: Any) -> Any:
        token = _current_call.set(context)
        limit = time_limit if time_limit is not None else context.time_limit
        try:
            if is_async:
                running = func(*args, **kwargs)
            else:
                running = context.run_sync(
                    functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
                )
            value = await (running if limit is None else _within(running, limit))
        except _TimeLimitReached:
            logger.error("%s.%s ran past its time limit of %ss", service, method, limit)
            raise JsonRpcError(
                TIME_LIMIT_EXCEEDED, "Time limit exceeded", {"limit": limit}
            ) from None
        except RpcError as exc:
            data = NODATA if exc.data is None else exc.data
            raise JsonRpcError(exc.code, exc.message, data) from exc
        except Exception as exc:
            logger.error("%s.%s raised %s: %s", service, method, type(exc).__name__, exc)
            data = protocol.exception_data(exc, with_traceback=context.debug)
            raise JsonRpcError(INTERNAL_ERROR, "Internal error", data) from exc
        finally:
            _current_call.reset(token)
        return Success(value)

    signature = inspect.signature(func)
    context_parameter = inspect.Parameter("__context", inspect.Parameter.POSITIONAL_ONLY)
    call.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[context_parameter, *signature.parameters.values()]
    )
    call.__name__ = method
    call.__doc__ = func.__doc__
    return call


class _TimeLimitReached(Exception):
    """Raised in place of the TimeoutError of the limit, never of the handler's own."""


async def _within(running: Awaitable[T], limit: float) -> T:
    """Await a handler, giving up after ``limit`` seconds.

    An async handler is cancelled. A plain function's thread cannot be stopped: it runs
    on, but its slot is freed and its caller answered.
    """
    task = asyncio.ensure_future(running)
    done, _ = await asyncio.wait({task}, timeout=limit)
    if not done:
        task.cancel()
        raise _TimeLimitReached
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
