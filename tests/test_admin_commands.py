"""``rpc-admin status|workers|call|ping|describe`` against real rpc-worker processes."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from rpc_redis import admin
from rpc_redis.embedded import free_port
from rpc_redis.testing import WorkerProcess, wait_until
from tests.conftest import REPOSITORY
from tests.test_admin import run_admin

BEAT = "0.2"  # heartbeat interval: a killed worker is lost after 0.6 s


def worker(url: str, *targets: str) -> WorkerProcess:
    args = [*(targets or ("services.calculator",)), "--redis-url", url]
    return WorkerProcess([*args, "--heartbeat-interval", BEAT], cwd=REPOSITORY)


def status_json(capsys: pytest.CaptureFixture[str], url: str, *more: str) -> tuple[int, Any]:
    code, out, err = run_admin(capsys, "status", "--redis-url", url, "--json", *more)
    assert err == ""
    return code, json.loads(out)


def by_service(report: Any) -> dict[str, Any]:
    return {service["service"]: service for service in report["services"]}


def test_status_follows_two_workers_through_a_kill_and_a_clean_stop(
    redis_url: str, redis_connection: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    with worker(redis_url, "services.calculator", "services.cats") as first:
        with worker(redis_url) as second:
            code, report = status_json(capsys, redis_url)
            assert code == 0 and report["flagged"] == 0
            calculator = by_service(report)["calculator"]
            assert {w["pid"] for w in calculator["workers"]} == {first.pid, second.pid}
            assert [w["pid"] for w in by_service(report)["cats"]["workers"]] == [first.pid]
            assert calculator["queue"] == "rpc:queue:{calculator}"
            assert (calculator["waiting"], calculator["in_flight"]) == (0, 0)
            code, out, _ = run_admin(capsys, "status", "--redis-url", redis_url)
            assert out.splitlines()[0].split() == [
                "SERVICE", "QUEUE", "WAITING", "IN", "FLIGHT", "DEAD", "CALLS/S", "WORKERS",
            ]  # fmt: skip
            assert f"    worker {calculator['workers'][0]['id']} (pid " in out

            second.signal(signal.SIGKILL)
            second.wait()

            def lost() -> list[Any]:
                return by_service(status_json(capsys, redis_url)[1])["calculator"]["lost"]

            wait_until(lambda: [w["pid"] for w in lost()] == [second.pid], 5, "lost after TTL")
            code, out, _ = run_admin(capsys, "status", "--redis-url", redis_url)
            assert f"(pid {second.pid} on " in out and "LOST: no heartbeat" in out
            calculator = by_service(status_json(capsys, redis_url)[1])["calculator"]
            assert [w["pid"] for w in calculator["workers"]] == [first.pid]
        # The first stops cleanly: its entry goes at once, the killed one's stays, lost.
    code, report = status_json(capsys, redis_url)
    assert code == 0
    calculator = by_service(report)["calculator"]
    assert calculator["workers"] == []
    assert [w["pid"] for w in calculator["lost"]] == [second.pid]
    redis_connection.rpush("rpc:queue:{calculator}", b"waiting")
    code, report = status_json(capsys, redis_url)
    assert code == admin.EXIT_FLAGGED == 3
    assert by_service(report)["calculator"]["flagged"] is True
    code, out, _ = run_admin(capsys, "status", "--redis-url", redis_url)
    assert "! 1 request(s) waiting and no live worker" in out
    redis_connection.delete("rpc:queue:{calculator}")
    # A live worker prunes the entries of dead ones: the registry holds no more.
    with worker(redis_url) as third:
        wait_until(lambda: lost() == [], 10, "the lost worker pruned")
        assert [w.pid for w in admin.list_workers(redis_connection)] == [third.pid]
    assert redis_connection.hlen("rpc:workers") == 0
    assert redis_connection.keys("rpc:worker:*") == []


def test_status_finds_a_queue_that_no_worker_ever_served(
    redis_url: str, redis_connection: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    redis_connection.rpush("rpc:queue:{calculatr}", b"1", b"2")
    code, report = status_json(capsys, redis_url, "cats")
    assert code == 3
    services = by_service(report)
    assert services["calculatr"]["waiting"] == 2 and services["calculatr"]["flagged"]
    assert services["cats"]["waiting"] == 0 and not services["cats"]["flagged"]


def test_workers_lists_each_registered_worker(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_admin(capsys, "workers", "--redis-url", redis_url)
    assert (code, out) == (0, "no worker is registered in rpc:workers\n")
    with worker(redis_url) as running:
        code, out, _ = run_admin(capsys, "workers", "--redis-url", redis_url, "--json")
        [entry] = json.loads(out)
        assert entry["alive"] is True and entry["pid"] == running.pid
        assert entry["queues"] == {"rpc:queue:{calculator}": "calculator"}
        assert entry["concurrency"] == 8 and entry["in_flight"] == 0
        code, out, _ = run_admin(capsys, "workers", "--redis-url", redis_url)
        assert out.startswith(f"{entry['id']}  alive  pid {running.pid} on ")
        assert "serving calculator  concurrency 8" in out


@pytest.fixture
def calculator_worker(redis_url: str) -> Iterator[WorkerProcess]:
    with worker(redis_url) as running:
        yield running


def test_call_prints_the_result_alone_and_exits_0(
    redis_url: str, calculator_worker: WorkerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    def call(*args: str) -> tuple[int, str, str]:
        return run_admin(capsys, "call", *args, "--redis-url", redis_url)

    assert call("calculator.add", "1", "2") == (0, "3\n", "")
    assert call("calculator.add", "--kw", "a=1", "--kw", "b=-5") == (0, "-4\n", "")
    assert call("calculator.add", '{"a": 0.5, "b": 0.25}') == (0, "0.75\n", "")
    assert call("calculator.mul", "--params", "[6, 7]") == (0, "42\n", "")
    assert call("calculator.add", "1", "2", "--json") == (0, '{"result":3}\n', "")


def test_call_prints_a_remote_error_and_exits_1(
    redis_url: str, calculator_worker: WorkerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_admin(capsys, "call", "calculator.div", "1", "0", "--redis-url", redis_url)
    assert (code, err) == (1, "")
    assert json.loads(out) == {"code": 1001, "message": "Division by zero", "data": {"dividend": 1}}
    code, out, _ = run_admin(capsys, "call", "calculator.pow", "--redis-url", redis_url, "--json")
    assert code == 1 and json.loads(out)["error"]["code"] == -32601


def test_call_without_a_reply_in_time_exits_124(
    redis_url: str, calculator_worker: WorkerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["call", "calculator.sleep", "1", "--timeout", "0.2", "--redis-url", redis_url]
    code, out, err = run_admin(capsys, *args)
    assert (code, out) == (124, "")
    assert err == (
        "rpc-admin: error: no reply from service 'calculator' to 'sleep' within 0.200s "
        "(is a worker serving it? rpc-admin status)\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["calculator"], "'calculator' is not SERVICE.METHOD (e.g. calculator.add)"),
        (["cats.receive", "Tom", "3"], "argument 'Tom' is not JSON (quote strings: '\"Tom\"')"),
        (["calculator.add", "1", "--kw", "b=2"], "JSON-RPC params are positional or named"),
        (["calculator.add", "--kw", "b"], "--kw 'b' is not NAME=VALUE"),
        (["calculator.add", "--params", "3"], "--params must be a JSON array or object"),
    ],
)
def test_call_refuses_what_it_cannot_send_with_exit_2(
    redis_url: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run_admin(capsys, "call", *args, "--redis-url", redis_url)
    assert (code, out) == (2, "")
    assert err.startswith(f"rpc-admin: error: {message}")
    assert err.count("\n") == 1


def test_ping_and_describe_go_through_a_live_worker(
    redis_url: str, calculator_worker: WorkerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_admin(capsys, "ping", "calculator", "--redis-url", redis_url, "--count", "2")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].startswith("pong from calculator: worker ")
    assert f"(pid {calculator_worker.pid} on " in lines[0] and lines[0].endswith(" ms")
    code, out, _ = run_admin(capsys, "ping", "calculator", "--redis-url", redis_url, "--json")
    pong = json.loads(out)
    assert pong["pid"] == calculator_worker.pid and pong["latency_ms"] > 0
    code, out, _ = run_admin(capsys, "describe", "calculator", "--redis-url", redis_url)
    assert code == 0
    assert "  div(a: number, b: number) -> number\n      Divide a by b" in out
    code, out, _ = run_admin(capsys, "describe", "calculator", "--redis-url", redis_url, "--json")
    assert json.loads(out)["info"]["title"] == "calculator"


def test_ping_with_no_worker_exits_124(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["ping", "calculator", "--redis-url", redis_url, "--timeout", "0.2"]
    code, out, err = run_admin(capsys, *args)
    assert (code, out) == (124, "")
    assert "no reply from service 'calculator' to 'rpc.ping'" in err


@pytest.mark.parametrize(
    "args", [["call", "calculator.add", "1"], ["ping", "calculator"], ["status"], ["workers"]]
)
def test_an_unreachable_redis_is_one_line_exit_1_and_no_password(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    url = f"redis://app:hunter2@127.0.0.1:{free_port()}/0"
    code, out, err = run_admin(capsys, *args, "--redis-url", url)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and err.startswith("rpc-admin: error: ")
    assert "hunter2" not in err and "app:***@127.0.0.1" in err
