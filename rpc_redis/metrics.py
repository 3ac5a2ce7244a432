"""Prometheus metrics for workers: a middleware that counts and times every call.

``rpc-worker --metrics-port PORT`` (or ``Worker(..., metrics_port=PORT)``) serves
``/metrics``; docs/observability.md lists every metric and label. Under
``--processes P`` the children write to a directory the supervisor names in
``PROMETHEUS_MULTIPROC_DIR`` and the supervisor alone serves the port, adding them up:
one endpoint for all of them. prometheus-client is an optional extra
(``pip install 'rpc-redis[metrics]'``), imported only by a worker that asks for metrics.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from .connection import AsyncRoutes
from .context import CallContext
from .errors import RpcConfigurationError, RpcError
from .middleware import Middleware

logger = logging.getLogger("rpc_redis.metrics")

INSTALL_HINT = "pip install 'rpc-redis[metrics]'"
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Bound on the sampling of queue depths and dead letters, a few LLENs.
SAMPLE_TIMEOUT = 10.0
# RPC calls take from a fraction of a millisecond to the time limit: seconds.
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

_started: contextvars.ContextVar[float] = contextvars.ContextVar("rpc_redis_metrics_started")


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ImportError(f"metrics need prometheus-client: {INSTALL_HINT}") from None
    return prometheus_client


def recording_for_others() -> bool:
    """Whether this process writes its metrics for another to serve (``--processes``)."""
    return bool(os.environ.get(MULTIPROCESS_VARIABLE))


class PrometheusMetrics(Middleware):
    """A worker's metrics, in a registry of their own (none is global)."""

    def __init__(self, services_by_queue: Mapping[str, str]) -> None:
        prometheus = _prometheus()
        self.registry = prometheus.CollectorRegistry(auto_describe=True)
        self.services_by_queue = dict(services_by_queue)  # queue -> service
        by_call = ["service", "method"]
        self.calls = prometheus.Counter(
            "rpc_redis_calls",
            "Calls a handler was run for, by outcome (ok or error) and JSON-RPC error code.",
            [*by_call, "outcome", "code"],
            registry=self.registry,
        )
        self.duration = prometheus.Histogram(
            "rpc_redis_call_duration_seconds",
            "Time from the call's start in the worker (before its middleware) to its outcome.",
            by_call,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = prometheus.Gauge(
            "rpc_redis_calls_in_flight",
            "Calls being served now.",
            by_call,
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.messages = prometheus.Counter(
            "rpc_redis_messages",
            "Messages taken off a queue (received), and those that ran no handler: skipped "
            "(deadline passed), rejected whole, dead-lettered.",
            ["service", "event"],
            registry=self.registry,
        )
        self.queue_depth = prometheus.Gauge(
            "rpc_redis_queue_depth",
            "Requests waiting in the queue, sampled every heartbeat interval.",
            ["service", "queue"],
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.dead_letters = prometheus.Gauge(
            "rpc_redis_dead_letters",
            "Entries in the service's dead-letter list, sampled every heartbeat interval.",
            ["service"],
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.reconnects = prometheus.Counter(
            "rpc_redis_reconnects",
            "Times the worker found Redis again after losing it.",
            registry=self.registry,
        )
        self._call_series: dict[tuple[str, str], tuple[Any, Any]] = {}

    # -- around each handler ------------------------------------------------------------

    def before_call(self, call: CallContext) -> None:
        _started.set(time.perf_counter())  # after_call runs in the same context
        self._series(call)[1].inc()

    def after_call(self, call: CallContext, result: Any, error: RpcError | None) -> None:
        elapsed = time.perf_counter() - _started.get(time.perf_counter())
        duration, in_flight = self._series(call)
        in_flight.dec()
        duration.observe(elapsed)
        if error is None:
            self.calls.labels(call.service, call.method, "ok", "").inc()
        else:
            self.calls.labels(call.service, call.method, "error", str(error.code)).inc()

    def _series(self, call: CallContext) -> tuple[Any, Any]:
        """A call's duration and in-flight series, looked up once per method."""
        key = (call.service, call.method)
        series = self._call_series.get(key)
        if series is None:
            series = (self.duration.labels(*key), self.in_flight.labels(*key))
            self._call_series[key] = series
        return series

    # -- for each message ---------------------------------------------------------------

    def after_receive(self, queue: str) -> None:
        self._message(queue, "received")

    def after_skip(self, queue: str, reason: str) -> None:
        self._message(queue, "skipped")

    def after_reject(self, queue: str, reason: str) -> None:
        self._message(queue, "rejected")

    def after_dead_letter(self, queue: str, reason: str) -> None:
        self._message(queue, "dead_lettered")

    def _message(self, queue: str, event: str) -> None:
        self.messages.labels(self.services_by_queue.get(queue, queue), event).inc()

    # -- from the worker's upkeep -----------------------------------------------------------

    async def sample(self, routes: AsyncRoutes, dead_letter_keys: Mapping[str, str]) -> None:
        """Read each queue's depth and each service's dead letters (service -> key), in
        one round trip of single-key commands (on a cluster, one per node)."""
        queues = list(self.services_by_queue)
        keys = [*queues, *dead_letter_keys.values()]
        counts = await routes.exchange([("LLEN", key) for key in keys], SAMPLE_TIMEOUT)
        for count in counts:
            if isinstance(count, Exception):
                raise count
        for queue, depth in zip(queues, counts, strict=False):
            self.queue_depth.labels(self.services_by_queue[queue], queue).set(depth)
        for service, count in zip(dead_letter_keys, counts[len(queues) :], strict=True):
            self.dead_letters.labels(service).set(count)

    def reconnected(self) -> None:
        self.reconnects.inc()

    # -- serving ------------------------------------------------------------------------------

    def serve(self, host: str, port: int) -> Callable[[], None]:
        """Serve this registry at ``http://host:port/metrics``; what stops it."""
        return serve_registry(self.registry, host, port)


def serve_registry(registry: Any, host: str, port: int) -> Callable[[], None]:
    """Serve a registry on a thread; a port that cannot be had is a configuration error."""
    prometheus = _prometheus()
    try:
        server, thread = prometheus.start_http_server(port, host, registry=registry)
    except OSError as exc:
        raise RpcConfigurationError(f"cannot serve metrics on {host}:{port}: {exc}") from None
    logger.info("metrics at http://%s:%d/metrics", host, server.server_port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


def serve_processes(directory: str, host: str, port: int) -> Callable[[], None]:
    """Serve, at one port, the metrics every process writes into ``directory``."""
    prometheus = _prometheus()
    from prometheus_client import multiprocess

    registry = prometheus.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return serve_registry(registry, host, port)


def process_exited(directory: str, pid: int) -> None:
    """Forget a child's live gauges (its counters still count)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
