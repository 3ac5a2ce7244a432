"""AsyncClient: the same surface as Client, many calls in flight on few connections."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from rpc_redis import (
    AsyncClient,
    InternalError,
    InvalidParams,
    MethodNotFound,
    RpcConnectionError,
    RpcError,
    RpcRedisError,
    RpcTimeout,
    Service,
)
from rpc_redis.client.aio import InFlight
from rpc_redis.embedded import EmbeddedRedis, free_port
from rpc_redis.protocol import encode_envelope
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


def record_deadlines(monkeypatch: pytest.MonkeyPatch) -> list[asyncio.TimerHandle]:
    """The timers calls arm on the running loop from now on, one per call."""
    loop = asyncio.get_running_loop()
    call_later = loop.call_later
    deadlines: list[asyncio.TimerHandle] = []

    def recording(delay: float, callback: Callable[..., object], *args: Any) -> asyncio.TimerHandle:
        handle = call_later(delay, callback, *args)
        if isinstance(getattr(callback, "__self__", None), InFlight):
            deadlines.append(handle)
        return handle

    monkeypatch.setattr(loop, "call_later", recording)
    return deadlines


async def test_a_push_redis_refuses_fails_the_call_at_once_and_disarms_its_deadline(
    redis_url: str, redis_connection: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    deadlines = record_deadlines(monkeypatch)
    redis_connection.set("rpc:queue:calculator", "not a list")
    refused = r"^Redis refused the request on rpc:queue:calculator: WRONGTYPE"
    # Far longer than a refusal takes to come back: only the push can fail these calls.
    async with AsyncClient(redis_url, timeout=10) as client:
        calc = client.proxy("calculator")
        with pytest.raises(RpcRedisError, match=refused) as caught:
            await calc.add(1, 2)
        assert isinstance(caught.value.__cause__, redis.exceptions.ResponseError)
        with pytest.raises(RpcRedisError, match=refused):
            await calc.notify.add(1, 2)
        assert client._pending == {}
    assert len(deadlines) == 2 and all(deadline.cancelled() for deadline in deadlines)


async def test_a_push_to_a_redis_that_is_down_fails_with_a_redacted_connection_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deadlines = record_deadlines(monkeypatch)
    port = free_port()
    async with AsyncClient(f"redis://:secret@127.0.0.1:{port}/0", timeout=10) as client:
        with pytest.raises(RpcConnectionError) as caught:
            await client.proxy("calculator").add(1, 2)
    assert str(caught.value).startswith(
        f"Redis at redis://:***@127.0.0.1:{port}/0 failed during the call: "
    )
    assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)
    assert len(deadlines) == 1 and deadlines[0].cancelled()


async def test_a_notification_redis_does_not_take_in_time_times_out(
    fresh_redis: EmbeddedRedis,
) -> None:
    with redis.Redis.from_url(fresh_redis.url) as connection:
        connection.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")  # RPUSH waits
        try:
            async with AsyncClient(fresh_redis.url, timeout=60) as client:
                notify = client.proxy("calculator", timeout=0.2).notify
                with pytest.raises(
                    RpcTimeout, match=r"'calculator' to 'notification' within 0\.200s"
                ):
                    await notify.add(1, 1)
        finally:
            connection.execute_command("CLIENT", "UNPAUSE")


async def test_a_cancelled_call_leaves_nothing_behind(
    redis_url: str, redis_connection: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    deadlines = record_deadlines(monkeypatch)
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: loop_errors.append(context))
    async with AsyncClient(redis_url, timeout=10) as client:
        # Cancelled while its request waits in the queue for a worker.
        waiting = asyncio.create_task(client.proxy("nobody").anything())
        assert await asyncio.to_thread(redis_connection.blpop, ["rpc:queue:nobody"], 10)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # Cancelled before its flush, which then fails: the flush still settles the other.
        redis_connection.set("rpc:queue:calculator", "not a list")
        calc = client.proxy("calculator")
        cancelled = asyncio.create_task(calc.add(1, 2))
        refused = asyncio.create_task(calc.add(3, 4))
        await asyncio.sleep(0)  # both run up to their await: queued for one flush
        cancelled.cancel()
        with pytest.raises(RpcRedisError, match="refused"):
            await refused
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert client._pending == {}
    assert len(deadlines) == 3 and all(deadline.cancelled() for deadline in deadlines)
    gc.collect()  # an unread future exception is reported when the future is collected
    assert loop_errors == []


async def test_a_call_made_inside_a_handler_waits_no_longer_than_its_caller(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    service = Service("outer")

    @service.method
    async def ask_nobody() -> float:
        async with AsyncClient(redis_url, timeout=30) as inner:  # its own default is far longer
            try:
                await inner.proxy("nobody").anything()
            except RpcTimeout as exc:
                return exc.waited
        raise AssertionError("nobody answered")

    request = {"jsonrpc": "2.0", "method": "ask_nobody", "id": 1}
    with serve_in_thread(service, redis_url):
        # The outer caller allows 1 s; the reply is read from the key well after.
        redis_connection.rpush(
            "rpc:queue:outer", encode_envelope(request, "rpc:reply:outer", time.time() + 1.0)
        )
        popped = await asyncio.to_thread(redis_connection.blpop, ["rpc:reply:outer"], 10)
    assert popped is not None
    assert 0.5 < json.loads(popped[1])["result"] <= 1.0  # the outer deadline, not 30 s
