"""Prometheus metrics of real rpc-worker processes, scraped over HTTP before and after calls."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from rpc_redis import Client, RpcError
from rpc_redis.embedded import EmbeddedRedis, free_port
from rpc_redis.testing import WorkerProcess, wait_until
from tests.conftest import REPOSITORY

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample at /metrics, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def worker_args(url: str, port: int, *more: str) -> list[str]:
    return [
        "services.calculator",
        "--redis-url", url,
        "--metrics-port", str(port),
        "--metrics-host", "127.0.0.1",
        "--heartbeat-interval", "0.2",
        *more,
    ]  # fmt: skip


def calls(service: str, method: str, outcome: str = "ok", code: str = "") -> dict[str, str]:
    return {"service": service, "method": method, "outcome": outcome, "code": code}


def test_counters_move_by_exactly_the_calls_made(redis_url: str) -> None:
    port = free_port()
    with WorkerProcess(worker_args(redis_url, port), cwd=REPOSITORY) as worker:
        worker.wait_for_line(rf"metrics at http://127\.0\.0\.1:{port}/metrics")
        before = scrape(port)
        with Client(redis_url, timeout=5) as client:
            calculator = client.proxy("calculator")
            for n in range(7):
                assert calculator.add(n, 1) == n + 1
            for _ in range(2):
                with pytest.raises(RpcError):
                    calculator.div(1, 0)
            with pytest.raises(RpcError):
                calculator.add(1)  # invalid params: no handler runs
        after = scrape(port)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("rpc_redis_calls_total", **calls("calculator", "add")) == 7
    assert moved("rpc_redis_calls_total", **calls("calculator", "div", "error", "1001")) == 2
    assert moved("rpc_redis_calls_total", **calls("calculator", "add", "error", "-32602")) == 0
    duration = {"service": "calculator", "method": "add"}
    assert moved("rpc_redis_call_duration_seconds_count", **duration) == 7
    assert moved("rpc_redis_call_duration_seconds_bucket", **duration, le="+Inf") == 7
    assert value(after, "rpc_redis_calls_in_flight", **duration) == 0
    received = {"service": "calculator", "event": "received"}
    assert moved("rpc_redis_messages_total", **received) == 10


def test_queue_depth_dead_letters_and_in_flight_are_sampled(redis_url: str) -> None:
    port = free_port()
    queue = "rpc:queue:{calculator}"
    args = worker_args(redis_url, port, "--concurrency", "1", "--prefetch", "0")
    with (
        WorkerProcess(args, cwd=REPOSITORY),
        Client(redis_url, timeout=10) as client,
        redis.Redis.from_url(redis_url) as connection,
        ThreadPoolExecutor(4) as pool,
    ):
        # A bare request with a numeric id has no reply key: a dead letter.
        connection.rpush(queue, b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":42}')
        slow = [pool.submit(client.proxy("calculator").sleep, 0.6) for _ in range(4)]

        def sampled(name: str, expected: float, **labels: str) -> None:
            wait_until(lambda: value(scrape(port), name, **labels) == expected, 5, name)

        sampled("rpc_redis_queue_depth", 3, service="calculator", queue=queue)
        sampled("rpc_redis_calls_in_flight", 1, service="calculator", method="sleep")
        sampled("rpc_redis_dead_letters", 1, service="calculator")
        sampled("rpc_redis_messages_total", 1, service="calculator", event="dead_lettered")
        assert [future.result() for future in slow] == [0.6] * 4
        sampled("rpc_redis_queue_depth", 0, service="calculator", queue=queue)


def test_reconnects_are_counted(fresh_redis: EmbeddedRedis) -> None:
    port = free_port()
    with WorkerProcess(worker_args(fresh_redis.url, port), cwd=REPOSITORY) as worker:
        assert value(scrape(port), "rpc_redis_reconnects_total") == 0
        fresh_redis.kill()
        worker.wait_for_line("cannot reach Redis")
        fresh_redis.start()
        worker.wait_for_line("connected to Redis")
        assert value(scrape(port), "rpc_redis_reconnects_total") == 1


def test_with_processes_one_endpoint_reports_all_of_them(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    port = free_port()
    args = worker_args(redis_url, port, "--processes", "2", "--concurrency", "1")
    with WorkerProcess(args, cwd=REPOSITORY) as supervisor:
        supervisor.wait_for_line("rpc-worker serving", 15, count=2)
        supervisor.wait_for_line(rf"metrics at http://127\.0\.0\.1:{port}/metrics")
        with Client(redis_url, timeout=10) as client, ThreadPoolExecutor(4) as pool:
            # Four calls of 0.4 s at once, one at a time per process: both serve some.
            sleeps = [pool.submit(client.proxy("calculator").sleep, 0.4) for _ in range(4)]
            assert [future.result() for future in sleeps] == [0.4] * 4
            for n in range(6):
                client.proxy("calculator").add(n, n)
        samples = scrape(port)
        served = served_by_each_worker(redis_connection)
    assert len(served) == 2 and all(served), served  # each process served some of them
    assert sum(served) == 10
    assert value(samples, "rpc_redis_calls_total", **calls("calculator", "sleep")) == 4
    assert value(samples, "rpc_redis_calls_total", **calls("calculator", "add")) == 6


def served_by_each_worker(connection: redis.Redis) -> list[int]:
    """What each registered worker has served of the calculator's queue, once the
    registry has caught up with all ten calls."""

    def counts() -> list[int]:
        entries = [json.loads(raw) for raw in connection.hvals("rpc:workers")]
        return [entry["served"].get("rpc:queue:{calculator}", 0) for entry in entries]

    wait_until(lambda: sum(counts()) == 10, 5, "the registry counting ten calls")
    return counts()


def test_a_worker_without_metrics_imports_neither_prometheus_nor_opentelemetry() -> None:
    # redis-py 8 imports opentelemetry itself when it is installed: only what we add counts.
    probe = (
        "import sys\n"
        "import redis, redis.asyncio\n"
        "before = set(sys.modules)\n"
        "from rpc_redis import Client, Worker\n"
        "from services.calculator import service\n"
        "worker = Worker(service, 'redis://127.0.0.1:1/0')\n"
        "Client('redis://127.0.0.1:1/0')\n"
        "assert worker.metrics is None\n"
        "loaded = [m for m in set(sys.modules) - before\n"
        "          if m.startswith(('prometheus', 'opentelemetry', 'rpc_redis.tracing'))]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPOSITORY, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr


def test_a_metrics_port_in_use_is_one_line_and_exit_2(redis_url: str) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        worker = WorkerProcess(worker_args(redis_url, port), cwd=REPOSITORY)
        worker.start(ready_timeout=0)
        assert worker.wait(30) == 2
    assert worker.lines[-1].startswith(
        f"rpc-worker: error: cannot serve metrics on 127.0.0.1:{port}"
    ), worker.output
