"""Pub/sub events against real Redis: fan-out to every subscribed worker, patterns, sync
and async handlers under the worker's limits and middleware, failures that are one log
line, and a subscription that comes back by itself after Redis does."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import redis

from rpc_redis import (
    AsyncClient,
    CallContext,
    Client,
    Middleware,
    RpcError,
    Service,
    current_call,
)
from rpc_redis.embedded import EmbeddedRedis
from rpc_redis.testing import WorkerProcess, serve_in_thread, wait_until
from tests.conftest import REPOSITORY


@pytest.fixture
def workers() -> Iterator[ExitStack]:
    """Started workers are stopped (SIGTERM, then SIGKILL) when the test ends."""
    with ExitStack() as stack:
        yield stack


def event_worker(redis_url: str, target: str, *options: str) -> WorkerProcess:
    env = {**os.environ, "RPC_REDIS_URL": redis_url}
    return WorkerProcess([target, *options], cwd=REPOSITORY, env=env)


class Seen:
    """What handlers saw, and an event per count reached, for tests to wait on."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.lock = threading.Lock()

    def add(self, item: Any) -> None:
        with self.lock:
            self.items.append(item)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Any]:
        wait_until(lambda: len(self.items) >= count, timeout, f"{count} events handled")
        return list(self.items)


def test_every_subscribed_worker_receives_each_message(
    redis_url: str, redis_connection: redis.Redis, workers: ExitStack
) -> None:
    first = workers.enter_context(event_worker(redis_url, "tests.event_service:listener"))
    second = workers.enter_context(event_worker(redis_url, "tests.event_service:listener"))
    assert "listener events on [news]" in first.wait_for_line("rpc-worker serving")
    with Client(redis_url) as client:
        assert client.publish("news", {"headline": "cats rule"}) == 2
    wait_until(lambda: redis_connection.llen("test:news") == 2)
    received = [json.loads(raw) for raw in redis_connection.lrange("test:news", 0, -1)]
    assert sorted(entry["pid"] for entry in received) == sorted([first.pid, second.pid])
    assert all(entry["data"] == {"headline": "cats rule"} for entry in received)
    assert all(entry["channel"] == "news" for entry in received)
    assert first.stop() == 0 and second.stop() == 0


def test_with_nobody_subscribed_a_message_reaches_no_one(redis_url: str) -> None:
    with Client(redis_url) as client:
        assert client.publish("news", {"lost": True}) == 0


def test_patterns_sync_and_async_handlers_and_the_channel_a_message_came_on(
    redis_url: str,
) -> None:
    service = Service("watcher")
    seen = Seen()

    @service.subscribe(pattern="sms.*")
    def plain(data: Any) -> None:
        call = current_call()
        assert call is not None
        seen.add(("plain", call.event, call.service, call.method, data))

    @service.subscribe("sms.in")
    async def coroutine(data: Any) -> None:
        await asyncio.sleep(0)
        call = current_call()
        assert call is not None
        seen.add(("async", call.event, call.service, call.method, data))

    async def publish_async() -> int:
        async with AsyncClient(redis_url) as client:
            return await client.publish("sms.out", 2)

    with serve_in_thread(service, redis_url), Client(redis_url) as client:
        assert client.publish("sms.in", 1) == 2  # one connection, subscribed twice
        assert asyncio.run(publish_async()) == 1
        assert client.publish("smsXout", 3) == 0
        handled = seen.wait_for(3)
    assert sorted(handled) == [
        ("async", "sms.in", "watcher", "coroutine", 1),
        ("plain", "sms.in", "watcher", "plain", 1),
        ("plain", "sms.out", "watcher", "plain", 2),
    ]


def test_a_failing_handler_or_a_bad_message_is_one_log_line_and_the_worker_goes_on(
    redis_url: str, redis_connection: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    service = Service("fragile")
    seen = Seen()

    @service.subscribe("jobs")
    def handle(data: Any) -> None:
        if data == "boom":
            raise KeyError("sku")
        if data == "refuse":
            raise RpcError("Not today", code=4000)
        seen.add(data)

    caplog.set_level(logging.INFO, logger="rpc_redis")
    with serve_in_thread(service, redis_url), Client(redis_url) as client:
        client.publish("jobs", "boom")
        client.publish("jobs", "refuse")
        redis_connection.publish("rpc:channel:jobs", b"not json")
        redis_connection.publish("rpc:channel:jobs", b'{"v":9,"data":1}')
        client.publish("jobs", "fine")
        assert seen.wait_for(1) == ["fine"]
    problems = sorted(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert len(problems) == 4, problems  # one line each, in the order they were met
    assert problems[0] == "fragile.handle failed on an event from jobs: [4000] Not today"
    assert problems[1] == "fragile.handle raised KeyError: 'sku'"
    assert problems[2].startswith("ignored a message on channel jobs: not valid JSON: ")
    assert problems[3] == "ignored a message on channel jobs: unsupported envelope version 9"


class Recording(Middleware):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None, dict[str, str]]] = []

    def before_send(self, call: CallContext) -> None:
        call.meta["trace"] = f"{call.method}-trace"
        self.calls.append(("before_send", call.method, call.event, dict(call.meta)))

    def after_reply(self, call: CallContext, result: Any, error: BaseException | None) -> None:
        self.calls.append(("after_reply", call.method, call.event, {"result": str(result)}))

    def before_call(self, call: CallContext) -> None:
        if call.params == ["refused"]:
            raise RpcError("Refused by middleware", code=4001)
        self.calls.append(("before_call", call.method, call.event, dict(call.meta)))

    def after_call(self, call: CallContext, result: Any, error: RpcError | None) -> None:
        self.calls.append(("after_call", call.method, call.event, {"error": str(error)}))


def test_events_run_under_the_middleware_of_both_sides(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    service = Service("audited")
    seen = Seen()

    @service.subscribe("audit")
    def record(data: Any) -> None:
        call = current_call()
        assert call is not None
        seen.add((data, call.meta))

    worker_side, client_side = Recording(), Recording()
    caplog.set_level(logging.ERROR, logger="rpc_redis")
    with serve_in_thread(service, redis_url, middleware=[worker_side]):
        with Client(redis_url, middleware=[client_side]) as client:
            assert client.publish("audit", "refused") == 1
            assert client.publish("audit", "hello") == 1
        assert seen.wait_for(1) == [("hello", {"trace": "publish-trace"})]
        wait_until(lambda: len(worker_side.calls) == 3)
    assert (
        client_side.calls
        == [
            ("before_send", "publish", "audit", {"trace": "publish-trace"}),
            ("after_reply", "publish", "audit", {"result": "1"}),
        ]
        * 2
    )
    assert worker_side.calls == [
        # A refusal is an outcome too, as it is for a call.
        ("after_call", "record", "audit", {"error": "[4001] Refused by middleware"}),
        ("before_call", "record", "audit", {"trace": "publish-trace"}),
        ("after_call", "record", "audit", {"error": "None"}),
    ]
    assert [r.getMessage() for r in caplog.records] == [
        "audited.record failed on an event from audit: [4001] Refused by middleware"
    ]


def test_event_handlers_share_the_worker_s_concurrency_limit(redis_url: str) -> None:
    service = Service("slow")
    running, most = 0, 0
    lock = threading.Lock()
    release = threading.Semaphore(0)
    seen = Seen()

    @service.subscribe("work")
    def work(data: Any) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.acquire(timeout=10)
        with lock:
            running -= 1
        seen.add(data)

    with serve_in_thread(service, redis_url, concurrency=2), Client(redis_url) as client:
        for number in range(5):
            client.publish("work", number)
        for handled in range(5):
            expected = min(2, 5 - handled)
            wait_until(lambda n=expected: running == n, what=f"{expected} handlers running")
            release.release()
            seen.wait_for(handled + 1)
    assert most == 2
    assert sorted(seen.items) == [0, 1, 2, 3, 4]


def test_a_plain_handler_past_the_default_time_limit_is_one_log_line_and_the_others_go_on(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A message has no caller's deadline: the worker's --default-time-limit bounds its
    plain handler. A thread cannot be cut short, so past the limit one line says so; the
    handler keeps its slot until it returns, and the other threads handle what comes."""
    service = Service("slow_news")
    release = threading.Event()
    seen = Seen()

    @service.subscribe("work")
    def work(data: str) -> None:
        if data == "slow":
            release.wait(10)
        seen.add(data)

    caplog.set_level(logging.ERROR, logger="rpc_redis.worker")
    with (
        serve_in_thread(service, redis_url, default_time_limit=0.3),
        Client(redis_url) as client,
    ):
        wait_until(lambda: client.publish("work", "warm-up") == 1, what="subscribed")
        client.publish("work", "slow")
        wait_until(lambda: "ran past its time limit" in caplog.text, 5, "the time limit's line")
        client.publish("work", "after")
        assert "after" in seen.wait_for(2)  # warm-up and after: slow still runs
        release.set()
        assert sorted(seen.wait_for(3)) == ["after", "slow", "warm-up"]
    lines = [r.getMessage() for r in caplog.records if "ran past its time limit" in r.getMessage()]
    assert len(lines) == 1
    assert "slow_news.work ran past its time limit of 0.3s on a message of channel work" in lines[0]


BURST = 3000


# Of eight: the one holding the turn (or the working lane), and the one or two the
# keeper may hand it to if a handler stalls past 5 ms on a loaded machine. Threads that
# took what was read ahead whenever they woke made it all eight, in a second's burst.
MOST_THREADS_IN_A_BURST = 3


def test_a_burst_of_quick_messages_runs_on_one_thread(redis_url: str) -> None:
    """The turn's holder handles what it read ahead; the other threads, which wake every
    half second to look, take none of it (they would run beside it, handing the GIL
    over at every message)."""
    service = Service("burst")
    threads: list[int] = []
    all_handled = threading.Event()

    @service.subscribe("burst")
    def handle(number: int) -> None:
        time.sleep(0.0003)
        threads.append(threading.get_ident())
        if len(threads) == BURST:
            all_handled.set()

    with serve_in_thread(service, redis_url, concurrency=8), Client(redis_url) as client:
        wait_until(lambda: client.publish("burst", -1) == 1, what="subscribed")
        wait_until(lambda: len(threads) >= 1)
        threads.clear()
        for number in range(BURST):
            client.publish("burst", number)
        assert all_handled.wait(30)
    assert len(set(threads)) <= MOST_THREADS_IN_A_BURST


def test_after_redis_restarts_the_worker_subscribes_again_and_says_what_it_missed(
    fresh_redis: EmbeddedRedis, workers: ExitStack
) -> None:
    worker = workers.enter_context(event_worker(fresh_redis.url, "tests.event_service:listener"))
    with redis.Redis.from_url(fresh_redis.url) as connection, Client(fresh_redis.url) as client:
        assert client.publish("news", "before") == 1
        wait_until(lambda: connection.llen("test:news") == 1)
    fresh_redis.kill()
    worker.wait_for_line(r"cannot reach Redis at .*; retrying with backoff")
    fresh_redis.start()
    line = worker.wait_for_line(r"subscribed again to rpc:channel:news after [\d.]+s", 15)
    assert "whatever was published to them meanwhile is lost" in line
    with redis.Redis.from_url(fresh_redis.url) as connection, Client(fresh_redis.url) as client:
        assert client.publish("news", "after") == 1
        wait_until(lambda: connection.llen("test:news") == 1)  # the restart lost the list
        assert json.loads(connection.lindex("test:news", 0) or b"{}")["data"] == "after"
    assert worker.stop() == 0
    said = [line for line in worker.lines if "subscribed again" in line]
    assert len(said) == 1, worker.output
