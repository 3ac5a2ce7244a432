"""OpenTelemetry spans for every call, on both sides of the Redis hop.

``Tracing`` is a middleware: in a client (``Client(url, middleware=[Tracing()])``) it
opens a CLIENT span per call and carries its W3C trace context (``traceparent``,
``tracestate``) in the envelope's ``meta``; in a worker (``rpc-worker --middleware
rpc_redis.tracing:Tracing``) it opens a SERVER span per call, child of the caller's,
and makes it current while the handler runs, so calls the handler makes continue the
trace. Attributes follow OpenTelemetry's semantic conventions for JSON-RPC
(``rpc.system`` ``jsonrpc``, ``rpc.service``, ``rpc.method``, ``rpc.jsonrpc.*``).

opentelemetry-api is an optional extra (``pip install 'rpc-redis[tracing]'``); spans
go wherever the tracer provider (yours, or the global one an SDK or
``opentelemetry-instrument`` sets up) sends them. Without the middleware nothing here
is imported or run.
"""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass
from typing import Any

from .context import CallContext
from .errors import RpcError
from .middleware import Middleware

INSTALL_HINT = "pip install 'rpc-redis[tracing]'"
TRACEPARENT = "traceparent"

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - the extra is installed wherever tests run
    trace = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class _Serving:
    """The span of the call a worker is serving in this context, and how to leave it."""

    call: CallContext
    span: Any
    token: Any


_serving: contextvars.ContextVar[_Serving | None] = contextvars.ContextVar(
    "rpc_redis_tracing_serving", default=None
)


class Tracing(Middleware):
    """A span per call: CLIENT spans in clients, SERVER spans in workers, one trace.

    ``tracer_provider`` None means the global one; ``propagator`` None means W3C
    trace context, which is what another language's client or worker reads.
    """

    def __init__(self, tracer_provider: Any = None, propagator: Any = None) -> None:
        if trace is None:
            raise ImportError(f"tracing needs opentelemetry-api: {INSTALL_HINT}")
        self._tracer = trace.get_tracer("rpc_redis", tracer_provider=tracer_provider)
        self._propagator = propagator or TraceContextTextMapPropagator()
        # A client's calls between before_send and after_reply (a CallContext cannot
        # carry attributes); each leaves in after_reply, cancelled calls included.
        self._sending: dict[int, tuple[CallContext, Any]] = {}
        self._lock = threading.Lock()

    # -- in the clients ------------------------------------------------------------------

    def before_send(self, call: CallContext) -> None:
        span = self._tracer.start_span(
            span_name(call), kind=trace.SpanKind.CLIENT, attributes=attributes(call)
        )
        if TRACEPARENT not in call.meta:  # a batch's calls share one meta: the first's
            self._propagator.inject(call.meta, context=trace.set_span_in_context(span))
        with self._lock:
            self._sending[id(call)] = (call, span)

    def after_reply(self, call: CallContext, result: Any, error: BaseException | None) -> None:
        with self._lock:
            _, span = self._sending.pop(id(call), (None, None))
        if span is not None:
            _end(span, error)

    # -- in the worker -------------------------------------------------------------------

    def before_call(self, call: CallContext) -> None:
        parent = self._propagator.extract(call.meta)
        span = self._tracer.start_span(
            span_name(call), context=parent, kind=trace.SpanKind.SERVER, attributes=attributes(call)
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        _serving.set(_Serving(call, span, token))

    def after_call(self, call: CallContext, result: Any, error: RpcError | None) -> None:
        serving = _serving.get()
        if serving is None or serving.call is not call:
            return  # refused by a middleware before this one began its span
        _serving.set(None)
        otel_context.detach(serving.token)
        _end(serving.span, error)


def span_name(call: CallContext) -> str:
    """``{rpc.service}/{rpc.method}``, as the conventions for RPC spans name them."""
    return f"{call.service}/{call.method}"


def attributes(call: CallContext) -> dict[str, Any]:
    described: dict[str, Any] = {
        "rpc.system": "jsonrpc",
        "rpc.service": call.service,
        "rpc.method": call.method,
        "rpc.jsonrpc.version": "2.0",
    }
    if not call.is_notification and call.request_id is not None:
        described["rpc.jsonrpc.request_id"] = str(call.request_id)
    return described


def _end(span: Any, error: BaseException | None) -> None:
    """End a span with its outcome: an RpcError's code and message, or what failed."""
    if error is not None:
        if isinstance(error, RpcError):
            span.set_attribute("rpc.jsonrpc.error_code", error.code)
            span.set_attribute("rpc.jsonrpc.error_message", error.message)
        span.set_attribute("error.type", type(error).__name__)
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
    span.end()
