"""Deadlines: handlers see the time left, and calls they make inherit it, from either client."""

from __future__ import annotations

import json
import time

import pytest
import redis

from rpc_redis import AsyncClient, Client, RpcTimeout, Service, current_call
from rpc_redis.client.policy import effective_timeout
from rpc_redis.protocol import encode_envelope
from rpc_redis.testing import serve_in_thread


def test_a_handler_reads_the_time_its_caller_has_left(redis_url: str) -> None:
    service = Service("clock")

    @service.method
    def remaining() -> float | None:
        call = current_call()
        assert call is not None and call.method == "remaining"
        return call.remaining()

    @service.method
    async def remaining_async() -> float | None:
        call = current_call()
        return None if call is None else call.remaining()

    with serve_in_thread(service, redis_url), Client(redis_url, timeout=4) as client:
        for method in ("remaining", "remaining_async"):
            left = client.proxy("clock").call(method)
            assert 3.0 < left <= 4.0
    assert current_call() is None  # outside a handler


def outer_service(redis_url: str) -> Service:
    """A handler for each client that calls a service nobody serves, allowing 30 s."""
    service = Service("outer")

    @service.method
    def ask_nobody_sync() -> dict[str, float]:
        inner = Client(redis_url, timeout=30)  # its own default is far longer
        try:
            inner.proxy("nobody").anything()
        except RpcTimeout as exc:
            return {"inner_waited": exc.waited, "effective": effective_timeout(30)}
        finally:
            inner.close()
        raise AssertionError("nobody answered")

    @service.method
    async def ask_nobody_async() -> dict[str, float]:
        async with AsyncClient(redis_url, timeout=30) as inner:
            try:
                await inner.proxy("nobody").anything()
            except RpcTimeout as exc:
                return {"inner_waited": exc.waited, "effective": effective_timeout(30)}
        raise AssertionError("nobody answered")

    return service


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_call_made_inside_a_handler_waits_no_longer_than_its_caller(
    redis_url: str, redis_connection: redis.Redis, kind: str
) -> None:
    request = {"jsonrpc": "2.0", "method": f"ask_nobody_{kind}", "id": 1}
    with serve_in_thread(outer_service(redis_url), redis_url):
        started = time.monotonic()
        # The outer caller allows 1 s; the reply is read from the key well after.
        redis_connection.rpush(
            "rpc:queue:{outer}", encode_envelope(request, "rpc:reply:outer", time.time() + 1.0)
        )
        popped = redis_connection.blpop(["rpc:reply:outer"], 10)
        elapsed = time.monotonic() - started
    assert popped is not None
    result = json.loads(popped[1])["result"]
    assert 0.5 < result["inner_waited"] <= 1.0  # inherited the outer deadline, not 30 s
    assert result["effective"] == 0.001  # by then, no time was left at all
    assert elapsed < 3


def test_effective_timeout_outside_a_handler_is_the_timeout_given() -> None:
    assert effective_timeout(7.5) == 7.5
