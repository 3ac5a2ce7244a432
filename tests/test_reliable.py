"""Reliable mode against real faults: kill -9 a worker mid-call, recover, dead-letter."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import redis
import redis.asyncio

from rpc_redis import Client, RpcTimeout, Service
from rpc_redis.embedded import EmbeddedRedis
from rpc_redis.protocol import decode_dead_letter
from rpc_redis.testing import WorkerProcess, calls_in_flight, serve_in_thread, wait_until
from tests.conftest import REPOSITORY

QUEUE = "rpc:queue:{slow}"
HEARTBEAT = "0.3"  # seconds; a worker silent for three beats is dead


def reliable_worker(redis_url: str, *options: str) -> WorkerProcess:
    env = {**os.environ, "RPC_REDIS_URL": redis_url}
    args = ["tests.slow_service", "--reliable", "--heartbeat-interval", HEARTBEAT, *options]
    return WorkerProcess(args, cwd=REPOSITORY, env=env)


@pytest.fixture
def workers() -> Iterator[ExitStack]:
    """Started workers are stopped (SIGTERM, then SIGKILL) when the test ends."""
    with ExitStack() as stack:
        yield stack


def holder_of_the_call(connection: redis.Redis) -> int:
    """The pid of the worker whose in-progress list holds a request."""
    for key in connection.scan_iter("rpc:inprogress:*"):
        if connection.llen(key):
            worker_id = key.decode().rsplit(":", 1)[1]  # rpc:inprogress:{queue tag}:<worker>
            return int(worker_id.split("-")[0])
    raise AssertionError("no request in progress")


def call_in_thread(client: Client, *args: object) -> tuple[threading.Thread, dict[str, object]]:
    outcome: dict[str, object] = {}

    def call() -> None:
        started = time.monotonic()
        try:
            outcome["result"] = client.proxy("slow").count_and_sleep(*args)
        except Exception as exc:
            outcome["error"] = exc
        outcome["waited"] = time.monotonic() - started

    thread = threading.Thread(target=call)
    thread.start()
    return thread, outcome


def test_killed_worker_request_is_answered_by_the_other(
    redis_url: str, redis_connection: redis.Redis, workers: ExitStack
) -> None:
    first = workers.enter_context(reliable_worker(redis_url))
    second = workers.enter_context(reliable_worker(redis_url))
    by_pid = {first.pid: first, second.pid: second}
    with Client(redis_url, timeout=15) as client:
        caller, outcome = call_in_thread(client, "kill-one", 1.0)
        wait_until(lambda: calls_in_flight(redis_url, client.client_name, QUEUE) == 1)
        wait_until(lambda: redis_connection.get("test:executions:kill-one") == b"1")
        victim_pid = holder_of_the_call(redis_connection)
        survivor = by_pid[next(pid for pid in by_pid if pid != victim_pid)]
        os.kill(victim_pid, signal.SIGKILL)
        caller.join(15)
    assert outcome.get("result") == 2, outcome  # it ran again, on the survivor
    assert outcome["waited"] < 15
    survivor.wait_for_line(r"recovered 1 request\(s\) of dead worker .*: 1 requeued")
    # The dead worker is forgotten and its in-progress list is gone.
    registry = redis_connection.hgetall("rpc:workers")
    assert [key.decode().split("-")[0] for key in registry] == [str(survivor.pid)]
    assert not [
        key for key in redis_connection.scan_iter("rpc:inprogress:*") if str(victim_pid) in str(key)
    ]


def test_without_another_worker_the_caller_times_out_and_a_new_worker_recovers_it(
    redis_url: str, redis_connection: redis.Redis, workers: ExitStack
) -> None:
    only = workers.enter_context(reliable_worker(redis_url))
    with Client(redis_url, timeout=20) as client:
        caller, outcome = call_in_thread(client, "late-recovery", 0.5)
        wait_until(lambda: redis_connection.get("test:executions:late-recovery") == b"1")
        only.signal(signal.SIGKILL)
        only.wait(10)
        # Nobody is left: wait until its heartbeat has expired, then bring a worker back.
        wait_until(lambda: not redis_connection.keys("rpc:worker:*"))
        returning = workers.enter_context(reliable_worker(redis_url))
        caller.join(20)
    assert outcome.get("result") == 2, outcome  # recovered and answered within 20 s
    returning.wait_for_line(r"recovered 1 request\(s\) .*: 1 requeued, 0 expired")


def test_a_request_whose_deadline_passed_is_dropped_not_recovered(
    redis_url: str, redis_connection: redis.Redis, workers: ExitStack
) -> None:
    only = workers.enter_context(reliable_worker(redis_url))
    with Client(redis_url, timeout=1.5) as client:
        caller, outcome = call_in_thread(client, "expired", 0.5)
        wait_until(lambda: redis_connection.get("test:executions:expired") == b"1")
        only.signal(signal.SIGKILL)
        only.wait(10)
        caller.join(10)
    assert isinstance(outcome.get("error"), RpcTimeout)
    assert outcome["waited"] < 2.5
    returning = workers.enter_context(reliable_worker(redis_url))
    returning.wait_for_line(r"recovered 1 request\(s\) .*: 0 requeued, 1 expired")
    assert redis_connection.get("test:executions:expired") == b"1"  # not run again
    assert redis_connection.llen(QUEUE) == 0


def test_a_request_that_kills_every_worker_ends_as_a_dead_letter(
    redis_url: str, redis_connection: redis.Redis, workers: ExitStack
) -> None:
    options = ("--max-deliveries", "2")
    first = workers.enter_context(reliable_worker(redis_url, *options))
    second = workers.enter_context(reliable_worker(redis_url, *options))
    with Client(redis_url, timeout=5) as client:
        client.proxy("slow").notify.crash()
        # One worker takes it and dies; the other recovers it, takes it and dies too.
        assert first.wait(15) != 0
        assert second.wait(15) != 0
    third = workers.enter_context(reliable_worker(redis_url, *options))
    third.wait_for_line(r"recovered 1 request\(s\) .*: 0 requeued, 0 expired, 1 dead-lettered")
    [entry] = [decode_dead_letter(e) for e in redis_connection.lrange("rpc:dead:{slow}", 0, -1)]
    assert entry["reason"] == "delivered 2 times, and every worker died before replying"
    assert '"method":"crash"' in entry["message"]
    assert entry["queue"] == QUEUE
    with Client(redis_url, timeout=5) as client:
        assert client.proxy("slow").fast(5) == 5  # the survivor serves on


def test_clean_stop_leaves_no_worker_state(
    redis_url: str, redis_connection: redis.Redis, workers: ExitStack
) -> None:
    worker = workers.enter_context(reliable_worker(redis_url))
    with Client(redis_url, timeout=5) as client:
        assert [client.proxy("slow").fast(n) for n in range(10)] == list(range(10))
    assert redis_connection.hlen("rpc:workers") == 1
    assert worker.stop() == 0
    leftovers = [
        key
        for pattern in ("rpc:worker:*", "rpc:inprogress:*", "rpc:workers")
        for key in redis_connection.keys(pattern)
    ]
    assert leftovers == []


def signal_on_a_heartbeat(connection: redis.Redis, worker: WorkerProcess) -> None:
    """SIGTERM the worker the moment its heartbeat is renewed (its PTTL jumps back up),
    when its upkeep is between a beat and the scan for dead workers."""
    [worker_id] = [key.decode() for key in connection.hkeys("rpc:workers")]
    heartbeat = f"rpc:worker:{worker_id}"
    last = connection.pttl(heartbeat)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ttl = connection.pttl(heartbeat)
        if ttl > last:
            worker.signal(signal.SIGTERM)
            return
        last = ttl
    raise AssertionError("the heartbeat was never renewed")


def test_sigterm_on_a_heartbeat_tick_always_exits_0(
    redis_url: str, redis_connection: redis.Redis, workers: ExitStack
) -> None:
    """A reliable worker signalled as a heartbeat lands stops, every time: its upkeep
    once went on beating, and the worker waited for it, until a second signal."""
    for _ in range(8):
        worker = workers.enter_context(reliable_worker(redis_url))
        wait_until(lambda: redis_connection.hlen("rpc:workers") == 1, 5, "registered")
        signal_on_a_heartbeat(redis_connection, worker)
        assert worker.wait(timeout=10) == 0, worker.output
        assert "stopped" in worker.lines[-1]
        assert redis_connection.hlen("rpc:workers") == 0


def test_a_request_moved_in_progress_is_served_when_moving_more_fails(
    fresh_redis: EmbeddedRedis,
) -> None:
    """A reliable receiver moves one request (BLMOVE), then as many of those waiting as
    it has room for (LMOVE). When none of those moves (the slot migrating under them, a
    refusal: here an ACL that forbids LMOVE), the one moved already is still handed on,
    to be served before the error is ridden out. Dropped, it sat in the worker's
    in-progress list, served by nobody, until the worker stopped."""
    from rpc_redis.worker.loop import Link, move_requests
    from rpc_redis.worker.receiving import TakenThenFailed

    with redis.Redis(host=fresh_redis.host, port=fresh_redis.port) as admin:
        admin.execute_command(
            "ACL", "SETUSER", "no-lmove", "on", ">pw", "~*", "+@all", "-lmove"
        )  # fmt: skip
        admin.rpush(QUEUE, b"first", b"second", b"third")

        async def take() -> TakenThenFailed:
            link = object.__new__(Link)  # a receiver's link, on a connection of our own
            link.queues, link.asking = [QUEUE], False
            link.connection = redis.asyncio.Connection(
                host=fresh_redis.host, port=fresh_redis.port, username="no-lmove", password="pw"
            )
            try:
                with pytest.raises(TakenThenFailed) as caught:
                    await move_requests(link, QUEUE, f"{QUEUE}:in-progress", 3, 1.0)
            finally:
                await link.connection.disconnect()
            return caught.value

        taken = asyncio.run(take())
        assert taken.requests == [b"first"]
        assert isinstance(taken.error, redis.exceptions.NoPermissionError)
        assert admin.lrange(f"{QUEUE}:in-progress", 0, -1) == [b"first"]
        assert admin.lrange(QUEUE, 0, -1) == [b"second", b"third"]


def test_requests_taken_are_served_when_taking_more_beside_them_is_refused(
    fresh_redis: EmbeddedRedis,
) -> None:
    """A worker serving two reliable queues takes a request from one, then more beside
    it with LMOVE; refused those (an ACL here, a slot migrating on a cluster), it still
    serves the one taken before it rides the refusal out. It dropped it, in its
    in-progress list, and the caller timed out."""
    first, second = Service("first"), Service("second")

    @first.method
    def echo(value: str) -> str:
        return value

    second.method(echo)
    with redis.Redis(host=fresh_redis.host, port=fresh_redis.port) as admin:
        admin.execute_command(
            "ACL", "SETUSER", "no-lmove", "on", ">pw", "~*", "&*", "+@all", "-lmove"
        )  # fmt: skip
    url = f"redis://no-lmove:pw@{fresh_redis.host}:{fresh_redis.port}/0"
    with Client(url, timeout=10) as client:
        worker = serve_in_thread([first, second], url, reliable=True, concurrency=4)
        with worker:
            assert client.proxy("first").echo("served") == "served"


def test_a_request_popped_is_served_when_popping_more_fails(fresh_redis: EmbeddedRedis) -> None:
    """The plain twin: a receiver of two queues BLPOPs a request, then LPOPs more from
    the queue it came from; refused that (an ACL here), the one popped, off its queue
    already, is still handed on to be served."""
    from rpc_redis.worker.loop import Link, pop_requests
    from rpc_redis.worker.receiving import TakenThenFailed

    other = "rpc:queue:{other}"
    with redis.Redis(host=fresh_redis.host, port=fresh_redis.port) as admin:
        admin.execute_command(
            "ACL", "SETUSER", "no-lpop", "on", ">pw", "~*", "+@all", "-lpop"
        )  # fmt: skip
        admin.rpush(QUEUE, b"first", b"second")

        async def take() -> TakenThenFailed:
            link = object.__new__(Link)  # a receiver's link, on a connection of our own
            link.queues, link.asking = [QUEUE, other], False
            link.connection = redis.asyncio.Connection(
                host=fresh_redis.host, port=fresh_redis.port, username="no-lpop", password="pw"
            )
            try:
                with pytest.raises(TakenThenFailed) as caught:
                    await pop_requests(link, link.queues, 3, 1.0)
            finally:
                await link.connection.disconnect()
            return caught.value

        taken = asyncio.run(take())
        assert (taken.queue, taken.requests) == (QUEUE, [b"first"])
        assert isinstance(taken.error, redis.exceptions.NoPermissionError)
        assert admin.lrange(QUEUE, 0, -1) == [b"second"]
