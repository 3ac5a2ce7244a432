"""What only the AsyncClient does: many calls in flight on few connections, one listener
for their replies, cancellation, one deadline timer per call. What both clients do is
pinned for both in test_client*.py."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from rpc_redis import (
    AsyncClient,
    RpcConnectionError,
    RpcRedisError,
)
from rpc_redis.client.aio import LISTEN_BLOCK_SECONDS, InFlight
from rpc_redis.embedded import EmbeddedRedis, free_port
from rpc_redis.errors import RpcConfigurationError
from rpc_redis.testing import WorkerProcess, serve_in_thread
from services.calculator import service as calculator
from tests.conftest import REPOSITORY


@pytest.fixture
def calculator_worker(redis_url: str) -> Iterator[None]:
    with serve_in_thread(calculator, redis_url):
        yield


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
    redis_connection.set("rpc:queue:{calculator}", "not a list")
    refused = rf"^Redis at {redis_url} refused the call to rpc:queue:\{{calculator\}}: WRONGTYPE"
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
        f"Redis at redis://:***@127.0.0.1:{port}/0 failed during the call to "
        "rpc:queue:{calculator}: "
    )
    assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)
    assert len(deadlines) == 1 and deadlines[0].cancelled()


async def test_a_cancelled_call_leaves_nothing_behind(
    redis_url: str, redis_connection: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    deadlines = record_deadlines(monkeypatch)
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: loop_errors.append(context))
    async with AsyncClient(redis_url, timeout=10) as client:
        # Cancelled while its request waits in the queue for a worker.
        waiting = asyncio.create_task(client.proxy("nobody").anything())
        assert await asyncio.to_thread(redis_connection.blpop, ["rpc:queue:{nobody}"], 10)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # Cancelled before its flush, which then fails: the flush still settles the other.
        redis_connection.set("rpc:queue:{calculator}", "not a list")
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


async def test_a_forbidden_lpop_fails_the_calls_waiting_as_a_configuration_error(
    fresh_redis: EmbeddedRedis,
) -> None:
    """The listener takes the replies behind the first with LPOP; an ACL that forbids it
    fails every call waiting at the listener's next round, not at their timeouts."""
    with redis.Redis.from_url(fresh_redis.url) as admin:
        admin.execute_command("ACL", "SETUSER", "no-lpop", "on", ">pw", "~*", "+@all", "-lpop")
    url = f"redis://no-lpop:pw@{fresh_redis.host}:{fresh_redis.port}/0"
    async with AsyncClient(url, timeout=30) as client:
        started = time.monotonic()
        calls = (client.proxy("nobody").anything() for _ in range(3))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert time.monotonic() - started < LISTEN_BLOCK_SECONDS + 2
        for outcome in outcomes:
            assert isinstance(outcome, RpcConfigurationError)
            assert "no permissions to run the 'lpop' command" in str(outcome)
            assert str(outcome).startswith("Redis at redis://no-lpop:***@")
        assert client._pending == {}
