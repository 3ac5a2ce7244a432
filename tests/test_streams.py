"""Streamed results against real Redis, from both clients: items as they come, errors
after the items before them, timeouts between items, a caller that stops (break,
cancellation, a timeout) ending the generator on the worker, and a slow caller that
bounds the reply list and the worker's memory."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis

from rpc_redis import (
    AsyncClient,
    CallContext,
    Client,
    InternalError,
    InvalidParams,
    MethodNotFound,
    Middleware,
    RpcError,
    RpcTimeout,
    Service,
    StreamingRequired,
    StreamingUnsupported,
    TimeLimitExceeded,
    current_call,
    protocol,
)
from rpc_redis.testing import serve_in_thread, wait_until
from tests.client_twins import Twin, twin_fixture

__all__ = ["twin_fixture"]

service = Service("litter")
closed = threading.Event()  # a generator of the slow kind was closed, or ended
produced = 0  # items the counting generator has yielded


@service.method
def kittens(count: int) -> Iterator[dict[str, Any]]:
    call = current_call()
    for number in range(count):
        yield {"number": number, "method": call.method if call else None}


@service.method
async def akittens(count: int) -> AsyncIterator[int]:
    for number in range(count):
        await asyncio.sleep(0)
        yield number


@service.method
def broken(good: int) -> Iterator[int]:
    yield from range(good)
    raise RpcError("No more kittens", {"after": good}, code=4100)


@service.method
def unserialisable() -> Iterator[Any]:
    yield 1
    yield object()


@service.method
def slow(count: int, pause: float) -> Iterator[int]:
    try:
        for number in range(count):
            yield number
            time.sleep(pause)
    finally:
        closed.set()


@service.method
async def aslow(count: int, pause: float) -> AsyncIterator[int]:
    try:
        for number in range(count):
            yield number
            await asyncio.sleep(pause)
    finally:
        closed.set()


@service.method(time_limit=0.3)
def stuck() -> Iterator[int]:
    yield 1
    time.sleep(1)
    yield 2


@service.method
def counting(count: int) -> Iterator[int]:
    global produced
    produced = 0
    for number in range(count):
        produced += 1
        yield number


@service.method
def plain(x: int) -> int:
    return x


@pytest.fixture
def worker(redis_url: str) -> Iterator[str]:
    closed.clear()
    with serve_in_thread(service, redis_url, reply_ttl=5):
        yield redis_url


@pytest.mark.parametrize("method", ["kittens", "akittens"])
def test_a_stream_yields_its_items_in_order(worker: str, twin: Twin, method: str) -> None:
    client = twin.connect(worker, timeout=5)
    items = list(getattr(client.proxy("litter").stream, method)(5))
    if method == "kittens":  # the call is current in the generator
        assert items == [{"number": n, "method": "kittens"} for n in range(5)]
    else:
        assert items == [0, 1, 2, 3, 4]
    assert list(client.proxy("litter").stream.kittens(0)) == []


def test_streams_are_served_on_the_event_loop_receiver_too(redis_url: str) -> None:
    with serve_in_thread(service, redis_url, receive_in_threads=False), Client(redis_url) as c:
        assert list(c.stream("litter", "akittens", [3])) == [0, 1, 2]


def test_an_error_mid_stream_comes_after_the_items_before_it(worker: str, twin: Twin) -> None:
    client = twin.connect(worker, timeout=5)
    got: list[int] = []
    with pytest.raises(RpcError) as raised:
        for item in client.proxy("litter").stream.broken(3):
            got.append(item)
    assert got == [0, 1, 2]
    assert (raised.value.code, raised.value.data) == (4100, {"after": 3})
    got = []
    with pytest.raises(InternalError, match="not JSON serialisable"):
        for item in client.proxy("litter").stream.unserialisable():
            got.append(item)
    assert got == [1]


def test_the_wrong_way_to_call_gets_a_clear_error(worker: str, twin: Twin) -> None:
    client = twin.connect(worker, timeout=5)
    proxy = client.proxy("litter")
    with pytest.raises(StreamingRequired, match=r"proxy\.stream\.kittens"):
        proxy.kittens(3)
    with pytest.raises(StreamingUnsupported, match=r"proxy\.plain"):
        list(proxy.stream.plain(3))
    with pytest.raises(MethodNotFound):
        list(proxy.stream.nothing())
    with pytest.raises(InvalidParams):
        list(proxy.stream.kittens(1, 2, 3))
    assert proxy.plain(3) == 3  # the worker serves on


def test_the_timeout_applies_between_items_and_the_worker_stops(worker: str, twin: Twin) -> None:
    client = twin.connect(worker, timeout=0.3)
    got: list[int] = []
    started = time.monotonic()
    with pytest.raises(RpcTimeout):
        for item in client.proxy("litter").stream.slow(100, 1.0):
            got.append(item)
    assert got == [0]
    assert time.monotonic() - started < 2
    assert closed.wait(5), "the generator was not closed on the worker"


def test_a_total_timeout_bounds_the_whole_stream(worker: str, twin: Twin) -> None:
    client = twin.connect(worker, timeout=5)
    got: list[int] = []
    started = time.monotonic()
    with pytest.raises(RpcTimeout):
        for item in client.stream("litter", "slow", [100, 0.1], total_timeout=0.5):
            got.append(item)
    assert 2 <= len(got) <= 7
    assert time.monotonic() - started < 1.5
    assert closed.wait(5)


def test_a_caller_that_breaks_off_ends_the_generator_on_the_worker(worker: str, twin: Twin) -> None:
    client = twin.connect(worker, timeout=5)
    for item in client.proxy("litter").stream.slow(10_000, 0.05):
        if item == 2:
            break
    assert closed.wait(5), "the generator was not closed on the worker"
    closed.clear()
    with client.proxy("litter").stream.aslow(10_000, 0.05) as kittens:
        assert next(iter(kittens)) == 0
    assert closed.wait(5)


def test_a_cancelled_task_ends_the_stream_on_the_worker(worker: str) -> None:
    async def read_until_cancelled() -> list[int]:
        got: list[int] = []
        async with AsyncClient(worker, timeout=5) as client:

            async def read() -> None:
                async for item in client.proxy("litter").stream.slow(10_000, 0.05):
                    got.append(item)

            task = asyncio.ensure_future(read())
            while len(got) < 2:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return got

    assert len(asyncio.run(read_until_cancelled())) >= 2
    assert closed.wait(5), "the generator was not closed on the worker"


def test_a_generator_past_its_time_limit_ends_the_stream(worker: str, twin: Twin) -> None:
    client = twin.connect(worker, timeout=5)
    got: list[int] = []
    with pytest.raises(TimeLimitExceeded):
        for item in client.proxy("litter").stream.stuck():
            got.append(item)
    assert got == [1]


@service.method
def growing(sizes: list[int]) -> Iterator[str]:
    for size in sizes:
        yield "x" * size


def test_an_item_over_max_reply_bytes_ends_the_stream_after_the_items_before_it(
    redis_url: str, twin: Twin
) -> None:
    """--max-reply-bytes bounds each item's message, as it bounds a reply."""
    with serve_in_thread(service, redis_url, max_reply_bytes=4096):
        client = twin.connect(redis_url, timeout=5)
        got: list[str] = []
        with pytest.raises(InternalError, match="Reply too large") as raised:
            for item in client.proxy("litter").stream.growing([10, 3000, 5000, 20]):
                got.append(item)
        assert [len(item) for item in got] == [10, 3000]
        assert raised.value.data["limit"] == 4096 and raised.value.data["size"] > 5000


def test_a_generator_with_no_limit_of_its_own_has_the_default_time_limit(
    redis_url: str, twin: Twin
) -> None:
    """A stream request carries no deadline for its whole run: each item is bounded by
    the worker's --default-time-limit, as a call with no deadline is."""
    closed.clear()
    with serve_in_thread(service, redis_url, default_time_limit=0.3):
        client = twin.connect(redis_url, timeout=5)
        got: list[int] = []
        with pytest.raises(TimeLimitExceeded):
            for item in client.proxy("litter").stream.slow(3, 2.0):
                got.append(item)
        assert got == [0]


def test_ten_thousand_items_to_a_slow_caller_keep_the_reply_list_within_its_window(
    worker: str, redis_connection: redis.Redis
) -> None:
    window = 32
    longest = 0
    furthest_ahead = 0
    done = threading.Event()
    with Client(worker, timeout=5) as client:
        stream = client.stream("litter", "counting", [10_000], window=window)

        def watch_the_reply_list() -> None:
            nonlocal longest
            while not done.is_set():
                longest = max(longest, redis_connection.llen(stream.reply_key))

        watcher = threading.Thread(target=watch_the_reply_list)
        watcher.start()
        taken = 0
        try:
            for _ in stream:
                taken += 1
                furthest_ahead = max(furthest_ahead, produced - taken)
                if taken % 500 == 0:
                    time.sleep(0.02)  # slow: the worker fills the window meanwhile
        finally:
            done.set()
            watcher.join()
    assert taken == 10_000
    assert longest == window  # the bound is reached, and never passed
    # What the worker has made and the caller not yet taken: the list, the caller's
    # one read, and the worker's one batch.
    assert furthest_ahead <= 3 * window


class Recording(Middleware):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, Any]] = []

    def before_send(self, call: CallContext) -> None:
        self.seen.append(("before_send", call.method, None))

    def after_reply(self, call: CallContext, result: Any, error: BaseException | None) -> None:
        self.seen.append(("after_reply", call.method, error or result))

    def before_call(self, call: CallContext) -> None:
        self.seen.append(("before_call", call.method, None))

    def after_call(self, call: CallContext, result: Any, error: RpcError | None) -> None:
        self.seen.append(("after_call", call.method, error or result))


def test_streams_run_under_the_middleware_of_both_sides(redis_url: str, twin: Twin) -> None:
    worker_side, client_side = Recording(), Recording()
    with serve_in_thread(service, redis_url, middleware=[worker_side]):
        client = twin.connect(redis_url, timeout=5, middleware=[client_side])
        assert list(client.proxy("litter").stream.kittens(2)) == [
            {"number": n, "method": "kittens"} for n in range(2)
        ]
        with client.proxy("litter").stream.slow(100, 0.05) as stream:
            next(iter(stream))
        wait_until(lambda: len(worker_side.seen) == 4)
    assert client_side.seen == [
        ("before_send", "kittens", None),
        ("after_reply", "kittens", {"items": 2}),
        ("before_send", "slow", None),
        ("after_reply", "slow", {"items": 1, "cancelled": True}),
    ]
    assert worker_side.seen[:2] == [
        ("before_call", "kittens", None),
        ("after_call", "kittens", {"items": 2}),
    ]
    assert worker_side.seen[2] == ("before_call", "slow", None)
    assert worker_side.seen[3][:2] == ("after_call", "slow")
    assert worker_side.seen[3][2]["cancelled"] is True


def test_a_stream_writes_only_to_a_reply_key_of_its_own(
    worker: str, redis_connection: redis.Redis
) -> None:
    redis_connection.rpush("someone:else", "theirs")
    request = protocol.request_object("kittens", [3], "k1")
    envelope = protocol.encode_envelope(request, "someone:else", None, None, {"window": 8})
    redis_connection.rpush("rpc:queue:{litter}", envelope)
    fresh = protocol.encode_envelope(request, "rpc:reply:mine", None, None, {"window": 8})
    redis_connection.rpush("rpc:queue:{litter}", fresh)
    replies = [redis_connection.blpop(["rpc:reply:mine"], 5) for _ in range(4)]
    assert [protocol.loads(reply[1]).get("item") for reply in replies if reply][:3] == [
        {"number": n, "method": "kittens"} for n in range(3)
    ]
    assert redis_connection.lrange("someone:else", 0, -1) == [b"theirs"]


@pytest.mark.parametrize(
    ("stream", "request_object", "data"),
    [
        ({"window": 0}, {"jsonrpc": "2.0", "method": "kittens", "params": [1], "id": 1}, "window"),
        (
            {"window": 4},
            [{"jsonrpc": "2.0", "method": "kittens", "params": [1], "id": 1}],
            "one request with an id",
        ),
    ],
)
def test_a_stream_request_that_cannot_be_served_gets_an_error_reply(
    worker: str, redis_connection: redis.Redis, stream: Any, request_object: Any, data: str
) -> None:
    envelope = protocol.encode_envelope(request_object, "rpc:reply:bad", None, None, stream)
    redis_connection.rpush("rpc:queue:{litter}", envelope)
    reply = redis_connection.blpop(["rpc:reply:bad"], 5)
    assert reply is not None
    error = protocol.loads(reply[1])["error"]
    assert error["code"] == -32600
    assert data in error["data"]
