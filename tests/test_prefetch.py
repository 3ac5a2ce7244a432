"""Taking requests ahead, in threads: fewer round trips in a burst, and nobody left
waiting behind a slow call because of it (see rpc_redis/worker/lanes.py)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

import pytest
import redis

from rpc_redis import AsyncClient, Service, Worker, WorkerThread
from rpc_redis.testing import wait_until

QUEUE = "rpc:queue:{ahead}"


class Held:
    """A plain-function service whose ``hold`` blocks until the test releases it."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.released = threading.Event()
        self.service = Service("ahead")

        @self.service.method
        def hold() -> str:
            self.started.set()
            if not self.released.wait(15):
                raise RuntimeError("never released")
            return "released"

        @self.service.method
        def echo(value: int) -> int:
            return value

    def worker(self, redis_url: str, prefetch: int = 8) -> Worker:
        return Worker(self.service, redis_url, concurrency=1, prefetch=prefetch)

    @contextlib.asynccontextmanager
    async def hold_then_echo(
        self, redis_url: str
    ) -> AsyncIterator[tuple[asyncio.Future[str], asyncio.Future[int]]]:
        """hold and echo pushed together, in one RPUSH: a one-thread worker pops hold
        and takes echo ahead. hold is released, and answers, on the way out."""
        async with AsyncClient(redis_url, timeout=10) as client:
            proxy = client.proxy("ahead")
            hold = asyncio.ensure_future(proxy.hold())
            echo = asyncio.ensure_future(proxy.echo(7))
            yield hold, echo
            self.released.set()
            assert await hold == "released"


@pytest.fixture
def held() -> Held:
    return Held()


@pytest.mark.parametrize("prefetch", [0, 8])
def test_a_burst_is_taken_in_few_round_trips(redis_url: str, held: Held, prefetch: int) -> None:
    async def burst() -> list[object]:
        async with AsyncClient(redis_url, timeout=10) as client:
            proxy = client.proxy("ahead")
            return list(await asyncio.gather(*(proxy.echo(n) for n in range(20))))

    with WorkerThread(held.worker(redis_url, prefetch)) as worker:
        assert asyncio.run(burst()) == list(range(20))
        # One thread, twenty requests waiting: its first BLPOP brings 8 more with it.
        assert worker.stats.taken_ahead >= 8 if prefetch else worker.stats.taken_ahead == 0
        # Counted once Redis confirms the write, which can come after the caller has it.
        wait_until(lambda: worker.stats.replied == 20)


def test_a_reply_kept_for_a_batch_is_not_held_behind_a_slow_call(
    redis_url: str, held: Held
) -> None:
    async def calls() -> None:
        async with AsyncClient(redis_url, timeout=10) as client:
            proxy = client.proxy("ahead")
            # Pushed together: the thread pops echo and takes hold ahead of time. It
            # keeps echo's reply to send with the next, and hold does not return...
            echo, hold = asyncio.ensure_future(proxy.echo(7)), asyncio.ensure_future(proxy.hold())
            assert await asyncio.wait_for(echo, 5) == 7  # ...so the keeper sent it.
            assert held.started.is_set() and not hold.done()
            held.released.set()
            assert await hold == "released"

    with WorkerThread(held.worker(redis_url)) as worker:
        asyncio.run(calls())
        assert worker.stats.taken_ahead == 1


def test_requests_taken_ahead_go_back_when_their_thread_is_stuck(
    redis_url: str, held: Held
) -> None:
    async def calls() -> None:
        async with held.hold_then_echo(redis_url) as (hold, echo):
            # The one thread is stuck in hold with echo taken ahead: the keeper gives
            # echo back to the queue, where another worker serves it.
            await asyncio.to_thread(wait_until, lambda: first.stats.given_back == 1)
            with redis.Redis.from_url(redis_url) as connection:
                assert connection.llen(QUEUE) == 1
            with WorkerThread(held.worker(redis_url)):
                assert await asyncio.wait_for(echo, 5) == 7
            assert not hold.done()

    first = held.worker(redis_url)
    with WorkerThread(first):
        asyncio.run(calls())
    assert first.stats.taken_ahead == 1


def test_a_stopping_worker_leaves_what_it_took_ahead_on_the_queue(
    redis_url: str, held: Held
) -> None:
    async def calls() -> None:
        async with held.hold_then_echo(redis_url) as (_, echo):
            await asyncio.to_thread(held.started.wait, 5)
            stopping = asyncio.ensure_future(asyncio.to_thread(thread.stop))
            await asyncio.to_thread(wait_until, lambda: first.stats.given_back == 1)
            held.released.set()
            await stopping
            assert not echo.done()  # nobody lost it: it waits on the queue...
            with WorkerThread(held.worker(redis_url)):
                assert await asyncio.wait_for(echo, 5) == 7  # ...for the next worker

    first = held.worker(redis_url)
    thread = WorkerThread(first).start()
    try:
        asyncio.run(calls())
    finally:
        thread.stop()
