"""OpenTelemetry: a client span and a worker span per call, in one trace across the
Redis hop, and a call made by a handler as a child of the worker's span. An in-memory
exporter collects the spans of clients and a worker running in this process."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from rpc_redis import AsyncClient, Client, RpcError, Service, current_call
from rpc_redis.testing import WorkerProcess, serve_in_thread, wait_until
from rpc_redis.tracing import Tracing
from tests.conftest import REPOSITORY


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Tracing:
    """Tracing with a provider of its own: nothing global is set."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider)


def outer_service(url: str, tracing: Tracing) -> Service:
    service = Service("outer")

    @service.method
    def add_twice(a: int, b: int) -> int:
        """Calls the calculator from inside a handler: the trace goes on."""
        assert current_call() is not None
        with Client(url, timeout=5, middleware=[tracing]) as inner:
            once = inner.proxy("inner").add(a, b)
            return int(inner.proxy("inner").add(once, once))

    @service.method
    def fail() -> None:
        raise RpcError("Nope", code=4000)

    return service


def inner_service() -> Service:
    service = Service("inner")

    @service.method
    async def add(a: int, b: int) -> int:
        return a + b

    return service


@pytest.fixture
def served(redis_url: str, tracing: Tracing) -> Iterator[None]:
    services = [outer_service(redis_url, tracing), inner_service()]
    with serve_in_thread(services, redis_url, middleware=[tracing]):
        yield


def spans_named(exporter: InMemorySpanExporter, count: int) -> dict[str, list[ReadableSpan]]:
    """The finished spans by name, once there are ``count`` (a worker span ends as its
    reply is written, a moment after the caller may have it)."""
    wait_until(lambda: len(exporter.get_finished_spans()) >= count, 5, f"{count} spans")
    named: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        named.setdefault(span.name, []).append(span)
    return named


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_client_and_worker_spans_share_one_trace_and_a_nested_call_is_a_child(
    redis_url: str, served: None, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with Client(redis_url, timeout=5, middleware=[tracing]) as client:
        assert client.proxy("outer").add_twice(1, 2) == 6
    spans = spans_named(exporter, 6)
    by_kind = {span.kind: span for span in spans["outer/add_twice"]}
    assert len(spans["outer/add_twice"]) == 2
    client_span, worker_span = by_kind[SpanKind.CLIENT], by_kind[SpanKind.SERVER]
    trace_id = client_span.context.trace_id
    assert worker_span.context.trace_id == trace_id
    assert worker_span.parent is not None
    assert worker_span.parent.span_id == client_span.context.span_id
    assert client_span.parent is None
    nested = spans["inner/add"]
    assert len(nested) == 4  # two calls, a client span and a worker span each
    for span in nested:
        assert span.context.trace_id == trace_id
    nested_clients = [span for span in nested if span.kind is SpanKind.CLIENT]
    nested_workers = [span for span in nested if span.kind is SpanKind.SERVER]
    for span in nested_clients:  # the handler's calls: children of the worker's span
        assert span.parent is not None and span.parent.span_id == worker_span.context.span_id
    client_ids = {span.context.span_id for span in nested_clients}
    assert {span.parent.span_id for span in nested_workers if span.parent} == client_ids
    assert attributes(worker_span) == {
        "rpc.system": "jsonrpc",
        "rpc.service": "outer",
        "rpc.method": "add_twice",
        "rpc.jsonrpc.version": "2.0",
        "rpc.jsonrpc.request_id": attributes(client_span)["rpc.jsonrpc.request_id"],
    }


def test_an_error_is_on_both_spans_with_its_code(
    redis_url: str, served: None, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with Client(redis_url, timeout=5, middleware=[tracing]) as client, pytest.raises(RpcError):
        client.proxy("outer").fail()
    for span in spans_named(exporter, 2)["outer/fail"]:
        assert span.status.status_code is StatusCode.ERROR
        assert attributes(span)["rpc.jsonrpc.error_code"] == 4000
        assert attributes(span)["rpc.jsonrpc.error_message"] == "Nope"


def test_the_async_client_links_its_spans_too(
    redis_url: str, served: None, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async def main() -> list[int]:
        async with AsyncClient(redis_url, timeout=5, middleware=[tracing]) as client:
            inner = client.proxy("inner")
            return list(await asyncio.gather(inner.add(1, 1), inner.add(2, 2)))

    assert asyncio.run(main()) == [2, 4]
    spans = spans_named(exporter, 4)["inner/add"]
    by_span = {span.context.span_id: span for span in spans}
    workers = [span for span in spans if span.kind is SpanKind.SERVER]
    assert len(workers) == 2
    for worker in workers:
        assert worker.parent is not None
        parent = by_span[worker.parent.span_id]
        assert parent.kind is SpanKind.CLIENT
        assert parent.context.trace_id == worker.context.trace_id
    assert len({span.context.trace_id for span in workers}) == 2  # two calls, two traces


def test_a_cancelled_call_ends_its_span(
    redis_url: str, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async def main() -> None:
        async with AsyncClient(redis_url, timeout=5, middleware=[tracing]) as client:
            waiting = asyncio.ensure_future(client.proxy("nobody").anything())
            await asyncio.sleep(0.05)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting

    asyncio.run(main())
    [span] = exporter.get_finished_spans()
    assert attributes(span)["error.type"] == "CancelledError"
    assert tracing._sending == {}


def test_the_trace_crosses_into_a_real_worker_process(
    redis_url: str, tracing: Tracing, exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    env = {**os.environ, "SPANS_FILE": str(spans_file)}
    args = ["services.calculator", "--redis-url", redis_url]
    args += ["--middleware", "tests.traced_worker:tracing"]
    with (
        WorkerProcess(args, cwd=REPOSITORY, env=env),
        Client(redis_url, timeout=5, middleware=[tracing]) as client,
    ):
        assert client.proxy("calculator").mul(6, 7) == 42
        wait_until(spans_file.exists, 5, "the worker's span")
    [client_span] = exporter.get_finished_spans()
    [worker_span] = [json.loads(line) for line in spans_file.read_text().splitlines()]
    assert worker_span["name"] == "calculator/mul" and worker_span["kind"] == "SERVER"
    assert worker_span["trace_id"] == client_span.context.trace_id
    assert worker_span["parent_id"] == client_span.context.span_id
