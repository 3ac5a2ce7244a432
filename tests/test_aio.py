"""AsyncClient: the same surface as Client, many calls in flight on few connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis

from rpc_redis import (
    AsyncClient,
    InternalError,
    InvalidParams,
    MethodNotFound,
    RpcConnectionError,
    RpcError,
    RpcTimeout,
)
from rpc_redis.embedded import EmbeddedRedis
from rpc_redis.testing import WorkerProcess, serve_in_thread
from services.calculator import DIVISION_BY_ZERO
from services.calculator import service as calculator
from tests.conftest import REPOSITORY


@pytest.fixture
def calculator_worker(redis_url: str) -> Iterator[None]:
    with serve_in_thread(calculator, redis_url):
        yield


async def test_calls_errors_and_timeouts(redis_url: str, calculator_worker: None) -> None:
    async with AsyncClient(redis_url, timeout=5) as client:
        calc = client.proxy("calculator")
        assert await calc.add(1, 2) == 3
        assert await calc.add(a=1.5, b=2) == 3.5
        assert await client.call("calculator", "mul", [6, 7]) == 42
        with pytest.raises(RpcError) as caught:
            await calc.div(1, 0)
        assert (caught.value.code, caught.value.data) == (DIVISION_BY_ZERO, {"dividend": 1})
        with pytest.raises(MethodNotFound):
            await calc.nope()
        with pytest.raises(InvalidParams):
            await calc.add(1)
        with pytest.raises(TypeError):
            calc.add(1, b=2)
        started = time.monotonic()
        with pytest.raises(RpcTimeout, match=r"'calculator' to 'sleep' within 0\.200s"):
            await client.proxy("calculator", timeout=0.2).sleep(2)
        assert time.monotonic() - started < 1.0
        # The client goes on working after a timeout; the late reply is dropped.
        assert await calc.sub(5, 3) == 2


async def test_notifications_and_batches(redis_url: str, calculator_worker: None) -> None:
    async with AsyncClient(redis_url, timeout=5) as client:
        assert await client.proxy("calculator").notify.add(1, 1) is None
        async with client.batch("calculator") as batch:
            total = batch.add(1, 2)
            failure = batch.div(1, 0)
            batch.notify.mul(2, 2)
        assert total.result() == 3
        with pytest.raises(RpcError):
            failure.result()
        batch = client.batch("calculator")
        batch.add(2, 2)
        batch.nope()
        outcomes = await batch.send()
        assert outcomes[0] == 4
        assert isinstance(outcomes[1], MethodNotFound)
        only_notifications = client.batch("calculator")
        only_notifications.notify.add(1, 1)
        assert await only_notifications.send() == []


async def test_handler_exception_is_internal_error(redis_url: str, calculator_worker: None) -> None:
    async with AsyncClient(redis_url, timeout=5) as client:
        with pytest.raises(InternalError) as caught:
            await client.proxy("calculator").add("x", 1)
    assert caught.value.data["type"] == "TypeError"


async def test_timeout_against_a_service_nobody_serves(redis_url: str) -> None:
    async with AsyncClient(redis_url, timeout=0.2) as client:
        with pytest.raises(RpcTimeout, match="'nobody'"):
            await client.proxy("nobody").anything()


async def test_redis_down_is_a_clear_connection_error() -> None:
    from rpc_redis.embedded import free_port

    async with AsyncClient(f"redis://127.0.0.1:{free_port()}/0", timeout=1) as client:
        started = time.monotonic()
        with pytest.raises((RpcConnectionError, RpcTimeout)):
            await client.proxy("calculator").add(1, 2)
        assert time.monotonic() - started < 1.5


def client_connections(url: str, name: str) -> int:
    with redis.Redis.from_url(url) as connection:
        return sum(1 for client in connection.client_list() if client.get("name") == name)


async def test_a_thousand_concurrent_calls_on_at_most_64_connections(redis_url: str) -> None:
    args = ["services.calculator", "--redis-url", redis_url, "--concurrency", "64"]
    with WorkerProcess(args, cwd=REPOSITORY):
        async with AsyncClient(redis_url, timeout=30, max_connections=64) as client:
            calc = client.proxy("calculator")
            most = 0
            finished = asyncio.Event()

            async def watch_connections() -> None:
                nonlocal most
                while not finished.is_set():
                    count = await asyncio.to_thread(
                        client_connections, redis_url, client.client_name
                    )
                    most = max(most, count)
                    await asyncio.sleep(0.01)

            watcher = asyncio.create_task(watch_connections())
            results = await asyncio.gather(*(calc.add(n, 1000) for n in range(1000)))
            finished.set()
            await watcher
            assert results == [n + 1000 for n in range(1000)]
            assert 2 <= most <= 64  # it did use several, and never more than the bound
            assert client_connections(redis_url, client.client_name) <= 64


async def test_connection_bound_is_configurable(redis_url: str, calculator_worker: None) -> None:
    async with AsyncClient(redis_url, timeout=30, max_connections=3) as client:
        calc = client.proxy("calculator")
        results = await asyncio.gather(*(calc.mul(n, 2) for n in range(200)))
        assert results == [n * 2 for n in range(200)]
        assert client_connections(redis_url, client.client_name) <= 3
    with pytest.raises(ValueError, match="two connections"):
        AsyncClient(redis_url, max_connections=1)


async def test_aclose_releases_every_connection(redis_url: str, calculator_worker: None) -> None:
    client = AsyncClient(redis_url, timeout=5)
    assert await client.proxy("calculator").add(1, 1) == 2
    await client.aclose()
    assert client_connections(redis_url, client.client_name) == 0


async def test_the_first_call_after_a_redis_restart_succeeds(fresh_redis: EmbeddedRedis) -> None:
    with serve_in_thread(calculator, fresh_redis.url):
        async with AsyncClient(fresh_redis.url, timeout=5) as client:
            calc = client.proxy("calculator")
            assert await calc.add(1, 2) == 3
            fresh_redis.kill()
            fresh_redis.start()
            # The pooled connections died with the old server; none is handed out stale.
            assert await calc.add(2, 3) == 5
