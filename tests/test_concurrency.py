"""Concurrent workers as real processes: overlap, fairness, time limits, --processes."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from rpc_redis import Client, TimeLimitExceeded
from rpc_redis.testing import (
    WorkerProcess,
    calls_in_flight,
    pid_alive,
    serve_in_thread,
    wait_until,
)
from services.calculator import service as calculator
from tests.conftest import REPOSITORY

# Both ways a worker receives: threads (the default for services with plain functions)
# and the event loop. Concurrency, fairness and time limits hold for both.
RECEIVING = pytest.mark.parametrize(
    "receiving", ["--receive-in-threads", "--no-receive-in-threads"], ids=["threads", "loop"]
)


def slow_worker(redis_url: str, *options: str) -> WorkerProcess:
    return WorkerProcess(["tests.slow_service", "--redis-url", redis_url, *options], cwd=REPOSITORY)


@RECEIVING
def test_sync_and_async_handlers_are_in_flight_together(redis_url: str, receiving: str) -> None:
    worker = slow_worker(redis_url, "--concurrency", "4", receiving)
    with worker, Client(redis_url, timeout=15) as client:
        slow = client.proxy("slow")
        with ThreadPoolExecutor(4) as pool:
            calls = [pool.submit(slow.meet_sync, "mixed", 4) for _ in range(2)]
            calls += [pool.submit(slow.meet_async, "mixed", 4) for _ in range(2)]
            # Each returns only once all four are inside their handlers at once.
            assert [call.result() for call in calls] == ["met"] * 4


@RECEIVING
def test_concurrency_bounds_the_requests_in_flight(redis_url: str, receiving: str) -> None:
    worker = slow_worker(redis_url, "--concurrency", "2", receiving)
    with worker, Client(redis_url, timeout=15) as client:
        slow = client.proxy("slow")
        with ThreadPoolExecutor(3) as pool:
            calls = [pool.submit(slow.meet_sync, "three", 3, 1.5) for _ in range(3)]
            # Two slots: the third call waits on the queue and the barrier breaks.
            outcomes = [call.exception() for call in calls]
        assert all(outcome is not None for outcome in outcomes)


@RECEIVING
def test_a_fast_call_is_not_held_up_by_slow_ones(redis_url: str, receiving: str) -> None:
    worker = slow_worker(redis_url, "--concurrency", "3", receiving)
    with worker, Client(redis_url, timeout=15) as client:
        slow = client.proxy("slow")
        with ThreadPoolExecutor(2) as pool:
            sleepers = [pool.submit(slow.sync_sleep, 3), pool.submit(slow.async_sleep, 3)]
            wait_until(
                lambda: calls_in_flight(redis_url, client.client_name, "rpc:queue:{slow}") == 2
            )
            assert slow.fast(7) == 7
            assert not any(sleeper.done() for sleeper in sleepers)
            assert sorted(s.result() for s in sleepers) == ["async slept 3", "sync slept 3"]


@RECEIVING
def test_method_time_limit_answers_and_frees_the_slot(redis_url: str, receiving: str) -> None:
    worker = slow_worker(redis_url, "--concurrency", "1", receiving)
    with worker, Client(redis_url, timeout=5) as client:
        slow = client.proxy("slow")
        with pytest.raises(TimeLimitExceeded) as caught:
            slow.stuck_sync()
        assert caught.value.code == -32001
        assert caught.value.data == {"limit": 0.3}
        # The stuck thread sleeps on for seconds; the one slot is free already.
        assert client.proxy("slow", timeout=1.5).fast(1) == 1


@RECEIVING
def test_worker_wide_time_limit_cancels_async_handlers(redis_url: str, receiving: str) -> None:
    args = ("--concurrency", "1", "--time-limit", "0.5", receiving)
    with slow_worker(redis_url, *args) as worker, Client(redis_url, timeout=5) as client:
        with pytest.raises(TimeLimitExceeded) as caught:
            client.proxy("slow").stuck_async()
        assert caught.value.data == {"limit": 0.5}
        assert client.proxy("slow").fast(2) == 2
        worker.wait_for_line("slow.stuck_async ran past its time limit of 0.5s")
        # The per-method limit (0.3 s) wins over the worker's.
        with pytest.raises(TimeLimitExceeded, match=r"\{.limit.: 0\.3\}"):
            client.proxy("slow").stuck_sync()


def test_sync_client_shared_by_16_threads_stays_within_its_bound(redis_url: str) -> None:
    with (
        slow_worker(redis_url, "--concurrency", "16"),
        Client(redis_url, timeout=15, max_connections=4) as client,
    ):
        slow = client.proxy("slow")
        most = 0
        stop = threading.Event()

        def watch() -> None:
            nonlocal most
            with redis.Redis.from_url(redis_url) as connection:
                while not stop.is_set():
                    names = [c.get("name") for c in connection.client_list()]
                    most = max(most, names.count(client.client_name))

        watcher = threading.Thread(target=watch)
        watcher.start()
        with ThreadPoolExecutor(16) as pool:
            results = list(
                pool.map(lambda n: [slow.fast(n * 100 + i) for i in range(25)], range(16))
            )
        stop.set()
        watcher.join()
        assert results == [[n * 100 + i for i in range(25)] for n in range(16)]
        assert 1 <= most <= 4


def test_processes_serve_in_parallel_and_stop_cleanly_with_calls_in_flight(
    redis_url: str,
) -> None:
    worker = slow_worker(redis_url, "--processes", "2", "--concurrency", "2")
    worker.start(ready_timeout=0)
    try:
        worker.wait_for_line("supervising 2 processes")
        worker.wait_for_line("rpc-worker serving", count=2)
        # The startup lines come before the receiving threads connect: wait for all four.
        wait_until(lambda: sum(c["cmd"] == "blpop" for c in receiving_connections(redis_url)) == 4)
        with Client(redis_url, timeout=15) as client:
            slow = client.proxy("slow")
            # Redis hands each call to the worker blocked longest: both processes serve.
            pids = {slow.where()["pid"] for _ in range(20)}
            assert len(pids) == 2
            with ThreadPoolExecutor(4) as pool:
                sleepers = [pool.submit(slow.sync_sleep, 1) for _ in range(4)]
                wait_until(
                    lambda: calls_in_flight(redis_url, client.client_name, "rpc:queue:{slow}") == 4
                )
                worker.signal(signal.SIGTERM)
                assert [s.result() for s in sleepers] == ["sync slept 1"] * 4
        assert worker.wait(15) == 0
        worker.wait_for_line("all worker processes exited")
        for pid in pids:
            assert not pid_alive(pid)
    finally:
        worker.stop()


@pytest.mark.parametrize("reliable", [True, False])
def test_no_queue_waits_while_another_receiver_holds_the_slots(
    redis_url: str, reliable: bool
) -> None:
    from rpc_redis import Service, Worker, WorkerThread

    alpha, beta = Service("alpha", reliable=reliable), Service("beta", reliable=True)

    @alpha.method(name="ping")
    def alpha_ping() -> str:
        return "alpha"

    @beta.method(name="ping")
    def beta_ping() -> str:
        return "beta"

    # Two receivers (one per reliable queue, one for the rest): the one that started
    # first must not keep every slot in its blocked BLPOP while the other has work.
    with WorkerThread(Worker([alpha, beta], redis_url, concurrency=4)):
        with Client(redis_url, timeout=1.0) as client:  # far less than the 5 s block
            for name in ("beta", "alpha", "beta", "alpha"):
                assert client.proxy(name).ping() == name


def test_threads_serve_plain_functions_where_they_pop_and_hand_async_ones_to_the_loop(
    redis_url: str,
) -> None:
    with slow_worker(redis_url, "--concurrency", "3") as worker, Client(redis_url) as client:
        worker.wait_for_line(r"\(concurrency 3 in threads, prefetch 8, pid")
        slow = client.proxy("slow")
        assert slow.where()["thread"].startswith("rpc-lane")
        assert slow.where_async()["thread"] == "MainThread"  # the event loop's
        # Three receiving threads, a connection each, all blocked in BLPOP.
        wait_until(lambda: len(receiving_connections(redis_url)) == 3, 5, "three BLPOPs")
        assert {c["cmd"] for c in receiving_connections(redis_url)} == {"blpop"}


def test_on_the_event_loop_plain_functions_run_in_the_handler_threads(redis_url: str) -> None:
    args = ("--concurrency", "3", "--no-receive-in-threads")
    with slow_worker(redis_url, *args) as worker, Client(redis_url) as client:
        worker.wait_for_line(r"\(concurrency 3 on the event loop, pid")
        slow = client.proxy("slow")
        assert slow.where()["thread"].startswith("rpc-handler")
        assert slow.where_async()["thread"] == "MainThread"
        wait_until(lambda: len(receiving_connections(redis_url)) == 1, 5, "one BLPOP")


@pytest.mark.parametrize(
    ("in_threads", "receivers"), [(True, 8), (False, 1)], ids=["in-threads", "on-event-loop"]
)
def test_a_ready_worker_has_its_receiving_connections_up(
    redis_url: str, in_threads: bool, receivers: int
) -> None:
    """Ready (and the startup line) means receiving, not a few milliseconds short of it."""
    options = {"concurrency": 8, "receive_in_threads": in_threads}
    with serve_in_thread(calculator, redis_url, **options):
        assert len(receiving_connections(redis_url)) == receivers


def receiving_connections(url: str) -> list[dict[str, str]]:
    with redis.Redis.from_url(url, decode_responses=True) as connection:
        return [
            client
            for client in connection.client_list()
            if client.get("name", "").startswith("rpc-worker-")
        ]


def test_reliable_queues_are_not_received_in_threads(redis_url: str) -> None:
    from rpc_redis import Service, Worker

    with pytest.raises(ValueError, match="reliable queues are received on the event loop"):
        Worker(Service("x", reliable=True), redis_url, receive_in_threads=True)
    assert not Worker(Service("x", reliable=True), redis_url).uses_lanes
