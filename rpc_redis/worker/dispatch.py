"""Dispatch: a service's methods behind jsonrpcserver, with the worker's options and
middleware, called in the receiving thread or on the event loop.

jsonrpcserver checks each request's method and params and builds its response; the
methods it calls are the service's functions adapted here (``Handler``): the call is
made current (``current_call()``), the middleware's ``before_call`` and
``after_call`` run around it, a time limit bounds it, and what it raises becomes the
JSON-RPC error its caller gets.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

with warnings.catch_warnings():
    # jsonrpcserver 5 reads its schema at import with a deprecated importlib.resources
    # call: its warning is no concern of ours, nor of our users' test runs.
    warnings.simplefilter("ignore", DeprecationWarning)
    from jsonrpcserver import JsonRpcError, Success, async_dispatcher, dispatcher
    from jsonrpcserver.dispatcher import create_request, to_response
    from jsonrpcserver.request import Request
    from jsonrpcserver.response import to_serializable_one
    from jsonrpcserver.result import Result, SuccessResult
    from jsonrpcserver.sentinels import NODATA, NOID

from .. import protocol
from ..context import CallContext, enter_call, leave_call, received_call
from ..discovery import openrpc_document
from ..errors import (
    SERVER_ERROR,
    InternalError,
    InvalidRequest,
    RpcError,
    StreamingRequired,
    StreamingUnsupported,
    TimeLimitExceeded,
)
from ..middleware import Hooks, run_hooks
from ..printable import printable, printable_exception
from ..service import Method, ParamsShape, Service
from ..validation import ParamsValidator
from .bounds import (
    DEADLINE_GRACE,
    PAST_DEADLINE,
    Bound,
    DeadlinePassed,
    TimeLimitReached,
    Watch,
    call_bound,
    within,
)
from .threads import HandlerThreads

T = TypeVar("T")

logger = logging.getLogger("rpc_redis.service")

# While a batch runs: the failures of its calls, logged in one line once it is done,
# so that a message costs a bounded number of log lines however large its batch.
_batch_failures: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "rpc_redis_batch_failures", default=None
)


def log_call_failure(line: str) -> None:
    """Log a call's failure: at once, or with the others of its batch."""
    failures = _batch_failures.get()
    if failures is None:
        logger.error("%s", line)
    else:
        failures.append(line)


@dataclass(frozen=True, slots=True)
class DispatchOptions:
    """How a worker runs handlers."""

    debug: bool = False  # tracebacks in internal-error replies
    time_limit: float | None = None  # for methods that set none of their own
    default_time_limit: float | None = None  # for those, when a request has no deadline
    # Where plain functions run when they must leave the caller's thread; None: inline.
    threads: HandlerThreads | None = None
    worker: str = ""  # the worker's id, which rpc.ping answers with


class Dispatcher:
    """One service's methods, ready to be called from a receiving thread or the loop."""

    def __init__(
        self,
        service: Service,
        options: DispatchOptions = DispatchOptions(),
        hooks: Hooks | None = None,
    ) -> None:
        self.service = service
        self.options = options
        self.hooks = hooks = hooks or Hooks()
        self.watch = watch = Watch()
        # The service's methods and the library's own (rpc.discover, rpc.ping).
        self._registered = {**service.methods, **builtin_methods(service, options.worker)}
        self._methods: dict[str, Callable[..., Any]] = {}  # for the event loop
        self._plain_methods: dict[str, Callable[..., Any]] = {}  # for a thread, plain only
        self._streams: dict[str, Callable[..., Any]] = {}  # called as streams
        for method in self._registered.values():
            handler = Handler(method, service.name, options, hooks, watch)
            if method.streams:
                self._methods[method.name] = _refusal(
                    StreamingRequired(data=f"call it as a stream: proxy.stream.{method.name}(...)")
                )
                self._streams[method.name] = handler.for_stream()
                continue
            self._methods[method.name] = handler.for_event_loop()
            self._streams[method.name] = _refusal(
                StreamingUnsupported(data=f"call it plainly: proxy.{method.name}(...)")
            )
            if not method.is_async:
                self._plain_methods[method.name] = handler.for_thread()

    def event_handler(
        self, method: Method
    ) -> tuple[Callable[..., Any], Callable[..., Any] | None, float | None]:
        """An event handler of this service, run as its methods are (current call,
        middleware, time limit): called with the event's context and data, it returns
        jsonrpcserver's Success or raises the JsonRpcError its failure maps to. For the
        event loop (awaited), and, for a plain function, for the receiving thread; and
        the limit that thread's receiver watches (the default time limit, as the
        lanes' overseer watches a request's deadline), else None: a --time-limit of
        the worker's is kept to the letter, on the handler threads."""
        handler = Handler(method, self.service.name, self.options, self.hooks, self.watch)
        if method.is_async:
            return handler.for_event_loop(), None, None
        if handler.limit is None:
            return handler.for_event_loop(), handler.for_event_thread(), handler.default_limit
        return handler.for_event_loop(), handler.for_thread(watched=True), None

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
        self, request: Any, deadline: float | None = None, meta: dict[str, str] | None = None
    ) -> Any:
        """Serve one request on this thread (see :meth:`dispatches_in_thread`): its
        response, None for a notification, or PAST_DEADLINE. A plain function runs here,
        unless a time limit bounds it, in which case it runs on the handler threads for
        at most that long (a deadline alone is watched by the lanes' keeper)."""
        context = self._context(request, deadline, meta)
        if not isinstance(context, CallContext):
            return context
        parsed = create_request(request)
        method = self._method_if_params_fit(self._plain_methods, parsed)
        try:
            if method is not None:
                result = dispatcher.call(parsed, context, method)
            else:
                _, result = dispatcher.dispatch_request(self._plain_methods, context, parsed)
        except DeadlinePassed:
            return PAST_DEADLINE
        except Exception as exc:
            return self._dispatcher_fault(request, exc)
        return self._response(parsed, result)

    async def dispatch(
        self, payload: Any, deadline: float | None = None, meta: dict[str, str] | None = None
    ) -> Any:
        """Serve a request or a batch: the response(s) to send, None if none are due, or
        PAST_DEADLINE if the caller's deadline cut it short. Plain functions run on the
        handler threads (inline if there are none)."""
        if isinstance(payload, list):
            if not payload:
                return protocol.error_response(None, InvalidRequest(data="empty batch"))
            failures: list[str] = []
            token = _batch_failures.set(failures)  # the calls' tasks inherit it
            try:
                responses = await asyncio.gather(
                    *(self._dispatch_one(item, deadline, meta) for item in payload)
                )
            finally:
                _batch_failures.reset(token)
            if failures:
                logger.error(
                    "%d of %d calls in a batch to %s failed; the first: %s",
                    len(failures),
                    len(payload),
                    self.service.name,
                    failures[0],
                )
            due = [item for item in responses if item is not None and item is not PAST_DEADLINE]
            if not due and PAST_DEADLINE in responses:
                return PAST_DEADLINE  # the batch's deadline passed: nobody waits for it
            return due or None
        return await self._dispatch_one(payload, deadline, meta)

    async def _dispatch_one(
        self, request: Any, deadline: float | None, meta: dict[str, str] | None
    ) -> Any:
        context = self._context(request, deadline, meta)
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
        except DeadlinePassed:
            return PAST_DEADLINE
        except Exception as exc:
            return self._dispatcher_fault(request, exc)
        return self._response(parsed, result)

    async def open_stream(
        self, request: Any, deadline: float | None, meta: dict[str, str] | None
    ) -> OpenStream | dict[str, Any]:
        """A stream request's generator, made (none of its code has run) with the call
        current and ``before_call`` run; or the error response that refuses it (invalid,
        unknown, params that do not fit, a method that does not stream, a hook's refusal)."""
        context = self._context(request, deadline, meta)
        if not isinstance(context, CallContext):
            return context
        parsed = create_request(request)
        try:
            _, result = await async_dispatcher.dispatch_request(self._streams, context, parsed)
        except Exception as exc:
            return self._dispatcher_fault(request, exc)
        opened = getattr(result, "_value", None)
        if isinstance(opened, SuccessResult) and isinstance(opened.result, OpenStream):
            return opened.result
        return cast(dict[str, Any], self._response(parsed, result))

    def _context(
        self, request: Any, deadline: float | None, meta: dict[str, str] | None
    ) -> CallContext | dict[str, Any]:
        """The context to serve a valid request in, or the error response of an invalid one."""
        problem = protocol.request_problem(request)
        if problem is not None:
            request_id = request.get("id") if isinstance(request, dict) else None
            request_id = request_id if protocol.is_valid_id(request_id) else None
            return protocol.error_response(request_id, InvalidRequest(data=problem))
        return received_call(
            self.service.name,
            request["method"],
            request.get("params", []),
            dict(meta) if meta else {},  # each call its own: a handler may change it
            request.get("id"),
            deadline,
            "id" not in request,
        )

    def _method_if_params_fit(
        self, methods: dict[str, Callable[..., Any]], parsed: Request
    ) -> Callable[..., Any] | None:
        """The method to call at once, if the request's params surely fit it; else None,
        and jsonrpcserver checks them (and answers what does not fit). Its own check
        binds the whole signature on every call: a fifth of a call's time in the worker.
        A validated method checks its own params, and says more of what does not fit."""
        registered = self._registered.get(parsed.method)
        if registered is None:
            return None
        if not (registered.validate or registered.params.fits(parsed.params)):
            return None
        return methods.get(parsed.method)

    def _dispatcher_fault(self, request: Any, exc: Exception) -> dict[str, Any]:
        """A fault in the dispatcher itself, not in a handler: answered, and logged."""
        log_call_failure(
            f"dispatching {self.service.name}.{printable(request['method'])} failed: "
            f"{printable_exception(exc)}"
        )
        error = RpcError("Server error", str(exc), code=SERVER_ERROR)
        return protocol.error_response(request.get("id"), error)

    @staticmethod
    def _response(parsed: Request, result: Result) -> Any:
        if parsed.id is NOID:
            return None  # a notification
        return to_serializable_one(to_response(parsed, result))


class Handler:
    """A plain function adapted as a jsonrpcserver method: context first, Result out.

    The adapted methods keep the function's signature (plus the context), so
    jsonrpcserver's own check of the params yields -32602 before the function runs.
    """

    def __init__(
        self, method: Method, service: str, options: DispatchOptions, hooks: Hooks, watch: Watch
    ) -> None:
        """``watch``: the one that bounds the calls of this worker's event loop."""
        self.func = method.func
        self.watch = watch
        self.service = service
        self.method = method.name
        self.is_async = method.is_async
        self.limit = method.time_limit if method.time_limit is not None else options.time_limit
        self.default_limit = options.default_time_limit
        self.debug = options.debug
        self.threads = options.threads
        self.before_call = hooks.before_call
        self.after_call = hooks.after_call
        self.validator = ParamsValidator(method.func) if method.validate else None

    def _admitted(
        self, context: CallContext, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The params a call runs with, once admitted: ``before_call`` may refuse the
        call (its RpcError), validation may refuse or convert the params. Each way of
        running a handler (loop, thread, stream) admits it so, with the call current."""
        if self.before_call:
            run_hooks(self.before_call, context, may_refuse=True)
        if self.validator is not None:
            return self.validator.params(args, kwargs)  # type: ignore[no-any-return]
        return args, kwargs

    def for_event_loop(self) -> Callable[..., Any]:
        async def call(context: CallContext, *args: Any, **kwargs: Any) -> Any:
            bound = self._bound_of(context)
            token = enter_call(context)
            cut = False
            try:
                args, kwargs = self._admitted(context, args, kwargs)
                if self.is_async:
                    running = self.func(*args, **kwargs)
                elif self.threads is not None:
                    running = self.threads.run(self._on_thread(args, kwargs))
                else:
                    running = _completed(self.func(*args, **kwargs))
                if bound is None:
                    value = await running
                elif self.limit is not None:  # a time limit of its own: kept to the letter
                    value = await within(running, bound.seconds)
                else:  # a deadline, or the default time limit: watched, at no cost per call
                    watched = self.watch.enter(bound.seconds)
                    try:
                        value = await running
                    finally:
                        cut = self.watch.leave(watched)
            except asyncio.CancelledError:
                if not cut:
                    raise
                raise self._failed(context, TimeLimitReached(), bound) from None
            except Exception as exc:
                raise self._failed(context, exc, bound) from exc
            finally:
                leave_call(token)
            return self._succeeded(context, value)

        return self._signed(call)

    def for_stream(self) -> Callable[..., Any]:
        """A generator method called as a stream: the call made current and
        ``before_call`` run, then the generator made and handed over, unstarted, as the
        success (``OpenStream``), for the worker's streaming to run item by item."""

        async def call(context: CallContext, *args: Any, **kwargs: Any) -> Any:
            token = enter_call(context)
            try:
                args, kwargs = self._admitted(context, args, kwargs)
                generator = self.func(*args, **kwargs)
                running_in = contextvars.copy_context()  # with this call current
            except Exception as exc:
                raise self._failed(context, exc, None) from exc
            finally:
                leave_call(token)
            return Success(OpenStream(generator, context, running_in, self))

        return self._signed(call)

    def for_thread(self, watched: bool = False) -> Callable[..., Any]:
        """``watched``: the caller's receiver watches the default time limit (events)."""
        assert not self.is_async

        def call(context: CallContext, *args: Any, **kwargs: Any) -> Any:
            # Bounded by its deadline alone, a call runs here, at no cost: the lanes'
            # overseer watches it. A time limit sends it to the handler threads.
            if self.limit is None and (context.deadline is not None or watched):
                bound = None
            else:
                bound = self._bound_of(context)
            token = enter_call(context)
            try:
                args, kwargs = self._admitted(context, args, kwargs)
                if bound is None or bound.limit is None or self.threads is None:
                    value = self.func(*args, **kwargs)
                else:
                    value = self.threads.run_within(self._on_thread(args, kwargs), bound.seconds)
            except Exception as exc:
                raise self._failed(context, exc, bound) from exc
            finally:
                leave_call(token)
            return self._succeeded(context, value)

        return self._signed(call)

    def for_event_thread(self) -> Callable[..., None]:
        """:meth:`for_thread`'s twin for an event handler without a time limit of its
        own, on its receiving thread (which watches the default limit): the same
        admission, middleware and failure mapping, without the jsonrpcserver Success
        nobody reads for an event. Events come in bursts: this is their hot path."""
        assert not self.is_async and self.limit is None
        func = self.func
        plain = not (self.before_call or self.after_call or self.validator is not None)

        def call(context: CallContext, *args: Any) -> None:
            token = enter_call(context)
            try:
                if plain:
                    func(*args)
                else:
                    args, kwargs = self._admitted(context, args, {})
                    self._succeeded(context, func(*args, **kwargs))
            except Exception as exc:
                raise self._failed(context, exc, None) from exc
            finally:
                leave_call(token)

        return self._signed(call)

    def _bound_of(self, context: CallContext) -> Bound | None:
        """How long this call may run; a deadline passed already ends it before it starts."""
        deadline = context.deadline
        bound: Bound | None
        if self.limit is None and deadline is not None:  # the usual case, made quick
            bound = Bound(deadline + DEADLINE_GRACE - time.time(), None)
        else:
            bound = call_bound(self.limit, self.default_limit, deadline, time.time())
        if bound is not None and bound.seconds <= 0 and bound.limit is None:
            self._cut_at_deadline(context)
        return bound

    def _cut_at_deadline(self, context: CallContext) -> None:
        """End a call at its caller's deadline: nothing is written (DeadlinePassed)."""
        log_call_failure(f"{self.service}.{self.method} was cut short at its caller's deadline")
        if self.after_call:
            error = TimeLimitExceeded(data={"deadline": context.deadline})
            run_hooks(self.after_call, context, None, error)
        raise DeadlinePassed

    def _on_thread(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Callable[[], Any]:
        """The call, to run on another thread in this one's context (current_call...)."""
        return functools.partial(contextvars.copy_context().run, self.func, *args, **kwargs)

    def _succeeded(self, context: CallContext, value: Any) -> Any:
        if self.validator is not None:
            value = self.validator.result(value)
        if self.after_call:
            run_hooks(self.after_call, context, value, None)
        return Success(value)

    def _failed(self, context: CallContext, exc: Exception, bound: Bound | None) -> JsonRpcError:
        """What the caller gets for what the handler (or a hook) raised; logged, and
        shown to the middleware's ``after_call``. Cut short at its deadline, the call
        is due nothing (DeadlinePassed)."""
        if isinstance(exc, TimeLimitReached) and bound is not None and bound.limit is None:
            self._cut_at_deadline(context)
        error = self.failed(context, exc, bound)
        return JsonRpcError(error.code, error.message, NODATA if error.data is None else error.data)

    def failed(self, context: CallContext, exc: Exception, bound: Bound | None = None) -> RpcError:
        """The RpcError for what the handler raised (logged unless it is one), after
        ``after_call`` has seen it: for a failed stream, as for a failed call."""
        error = self._as_rpc_error(exc, bound)
        if self.after_call:
            run_hooks(self.after_call, context, None, error)
        return error

    def finished(self, context: CallContext, value: Any) -> None:
        """A stream ran to its end: ``after_call`` sees what ends it."""
        if self.after_call:
            run_hooks(self.after_call, context, value, None)

    def _as_rpc_error(self, exc: Exception, bound: Bound | None) -> RpcError:
        if isinstance(exc, TimeLimitReached) and bound is not None:
            limit = bound.limit
            log_call_failure(f"{self.service}.{self.method} ran past its time limit of {limit}s")
            return TimeLimitExceeded(data={"limit": limit})
        if isinstance(exc, RpcError):
            return exc
        log_call_failure(
            f"{self.service}.{self.method} raised {type(exc).__name__}: {printable(exc)}"
        )
        return InternalError(data=protocol.exception_data(exc, with_traceback=self.debug))

    def _signed(self, call: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(self.func)
        context_parameter = inspect.Parameter("__context", inspect.Parameter.POSITIONAL_ONLY)
        call.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[context_parameter, *signature.parameters.values()]
        )
        call.__name__ = self.method
        call.__doc__ = self.func.__doc__
        return call


@dataclass(frozen=True, slots=True)
class OpenStream:
    """A stream request, opened: its generator (not started), its call, the context
    the generator runs in (its call current), and the handler that maps its end."""

    generator: Any  # a generator, or an async generator
    call: CallContext
    running_in: contextvars.Context
    handler: Handler


def _refusal(error: RpcError) -> Callable[..., Any]:
    """A method that answers every call with ``error`` (a stream called plainly...)."""

    async def refuse(context: CallContext, *args: Any, **kwargs: Any) -> Any:
        raise JsonRpcError(error.code, error.message, NODATA if error.data is None else error.data)

    return refuse


def builtin_methods(service: Service, worker: str) -> dict[str, Method]:
    """The library's own methods, which every service answers (JSON-RPC reserves the
    ``rpc.`` prefix for them): ``rpc.discover``, the service's OpenRPC document, and
    ``rpc.ping``, which worker answered. They run through the middleware like any
    other, so a check that refuses strangers refuses them here too."""
    document = functools.cache(functools.partial(openrpc_document, service))
    host = socket.gethostname()

    def discover() -> dict[str, Any]:
        """The service's OpenRPC document."""
        return document()

    def ping() -> dict[str, Any]:
        """Which worker answered: its id, host and pid."""
        return {"service": service.name, "worker": worker, "host": host, "pid": os.getpid()}

    return {
        name: Method(name, func, None, False, ParamsShape(func))
        for name, func in (("rpc.discover", discover), ("rpc.ping", ping))
    }


async def _completed(value: T) -> T:
    return value
