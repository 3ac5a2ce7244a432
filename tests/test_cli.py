"""``rpc-worker`` as a real process: startup, options, signals, Redis outages."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time

import pytest

from rpc_redis import Client, MethodNotFound, RpcRedisError
from rpc_redis.embedded import EmbeddedRedis, free_port
from rpc_redis.testing import WorkerProcess, calls_in_flight, rpc_worker_command, wait_until
from tests.conftest import REPOSITORY


def environment(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RPC_REDIS_URL", "REDIS_URL")}
    env.update(overrides)
    return env


def test_serves_every_service_in_the_modules(redis_url: str) -> None:
    args = ["services.calculator", "services.cats", "--redis-url", redis_url]
    with WorkerProcess(args, cwd=REPOSITORY) as worker, Client(redis_url, timeout=5) as client:
        startup = worker.wait_for_line("rpc-worker serving")
        assert "calculator [add, div, mul, sleep, sub] from rpc:queue:{calculator}" in startup
        assert "cats [kittens, receive] from rpc:queue:{cats}" in startup
        assert redis_url.split("//")[1] in startup
        assert client.proxy("calculator").add(1, 2) == 3
        assert client.proxy("cats").receive("Tom", 3) == "ok: Tom received"
        worker.wait_for_line("server received cat Tom which is 3 years old")


def test_module_attr_serves_only_that_service(redis_url: str) -> None:
    with WorkerProcess(["services.cats:service", "--redis-url", redis_url], cwd=REPOSITORY) as w:
        assert "calculator" not in w.wait_for_line("rpc-worker serving")


def test_redis_url_comes_from_rpc_redis_url_then_redis_url(redis_url: str) -> None:
    unused = f"redis://127.0.0.1:{free_port()}/0"
    env = environment(RPC_REDIS_URL=redis_url, REDIS_URL=unused)
    with WorkerProcess(["services.calculator"], cwd=REPOSITORY, env=env) as worker:
        assert redis_url.split("//")[1] in worker.wait_for_line("rpc-worker serving")
    env = environment(REDIS_URL=redis_url)
    with WorkerProcess(["services.calculator"], cwd=REPOSITORY, env=env) as worker:
        assert redis_url.split("//")[1] in worker.wait_for_line("rpc-worker serving")


def test_queue_option_serves_a_named_list(redis_url: str) -> None:
    args = ["services.calculator", "--redis-url", redis_url, "--queue", "rpc"]
    with WorkerProcess(args, cwd=REPOSITORY), Client(redis_url, timeout=5) as client:
        assert client.proxy("calculator", queue="rpc").mul(6, 7) == 42


def test_sigterm_finishes_the_call_in_flight_then_exits_0(redis_url: str) -> None:
    args = ["services.calculator", "--redis-url", redis_url]
    with WorkerProcess(args, cwd=REPOSITORY) as worker, Client(redis_url, timeout=10) as client:
        outcome: dict[str, object] = {}

        def call() -> None:
            outcome["result"] = client.proxy("calculator").sleep(1.0)

        caller = threading.Thread(target=call)
        caller.start()
        queue = "rpc:queue:{calculator}"
        wait_until(lambda: calls_in_flight(redis_url, client.client_name, queue) == 1)
        worker.signal(signal.SIGTERM)
        # 0 if the signal beat the popped request to its task: it is served all the same.
        worker.wait_for_line(r"stopping: finishing [01] request")
        caller.join(10)
        assert outcome["result"] == 1.0
        assert worker.wait(10) == 0
        worker.wait_for_line("stopped")


def test_second_signal_exits_at_once(redis_url: str) -> None:
    args = ["services.calculator", "--redis-url", redis_url]
    with WorkerProcess(args, cwd=REPOSITORY) as worker, Client(redis_url, timeout=3) as client:
        outcome: list[BaseException] = []

        def call() -> None:
            try:
                client.proxy("calculator").sleep(20)
            except RpcRedisError as exc:  # the worker died under it
                outcome.append(exc)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        queue = "rpc:queue:{calculator}"
        wait_until(lambda: calls_in_flight(redis_url, client.client_name, queue) == 1)
        worker.signal(signal.SIGINT)
        # 0 if the signal beat the popped request to its task: it is served all the same.
        worker.wait_for_line(r"stopping: finishing [01] request")
        started = time.monotonic()
        worker.signal(signal.SIGINT)
        assert worker.wait(10) == 1
        assert time.monotonic() - started < 5
        worker.wait_for_line("exiting now")
        caller.join(10)
        assert len(outcome) == 1  # a timeout: nobody answers a killed worker's call


def test_waits_for_redis_at_startup_with_one_clear_line() -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    worker = WorkerProcess(["services.calculator", "--redis-url", url], cwd=REPOSITORY)
    worker.start(ready_timeout=0)
    try:
        worker.wait_for_line(f"cannot reach Redis at {url}")
        with EmbeddedRedis(port) as server:
            worker.wait_for_line("rpc-worker serving", timeout=15)
            with Client(server.url, timeout=5) as client:
                assert client.proxy("calculator").add(2, 3) == 5
            assert worker.stop() == 0
    finally:
        worker.stop()
    assert "Traceback" not in worker.output
    assert sum("cannot reach Redis" in line for line in worker.lines) == 1
    assert any("connected to Redis" in line for line in worker.lines)


def test_stop_while_waiting_for_redis_exits_0() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    worker = WorkerProcess(["services.calculator", "--redis-url", url], cwd=REPOSITORY)
    worker.start(ready_timeout=0)
    try:
        worker.wait_for_line("cannot reach Redis")
        assert worker.stop(timeout=10) == 0
    finally:
        worker.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no_such_module_here"], "No module named 'no_such_module_here'"),
        (["services.calculator:nothing"], "services.calculator:nothing is not a Service"),
        (["services"], "module services defines no Service"),
        (["services.calculator", "services.cats", "--queue", "x"], "only when serving one"),
        (["services.calculator", "--concurrency", "0"], "must be at least 1"),
        (["services.calculator", "--reply-ttl", "0"], "must be a positive number"),
        (["services.calculator", "--reliable", "--receive-in-threads"], "on the event loop"),
        (["services.calculator", "--prefetch", "-1"], "must be at least 0"),
    ],
)
def test_bad_arguments_exit_2_with_one_clear_line(args: list[str], message: str) -> None:
    done = subprocess.run(
        [*rpc_worker_command(), *args],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_debug_log_level_and_debug_tracebacks(redis_url: str) -> None:
    args = ["services.calculator", "--redis-url", redis_url, "--log-level", "debug", "--debug"]
    with WorkerProcess(args, cwd=REPOSITORY) as worker, Client(redis_url, timeout=5) as client:
        with pytest.raises(MethodNotFound):
            client.proxy("calculator").nope()
        worker.wait_for_line(r"WARNING .*calculator\.nope: error -32601")
        assert any(" DEBUG " in line for line in worker.lines) or worker.wait_for_line(" DEBUG ")


def test_a_bound_with_no_default_of_none_can_be_turned_off_by_choice() -> None:
    from rpc_redis.cli import settings_from, worker_parser

    parse = worker_parser().parse_args
    defaults = settings_from(parse(["services.calculator"]))
    assert defaults.default_time_limit == 60 and defaults.time_limit is None
    assert defaults.drain_timeout == 8 and defaults.max_batch == 1000
    assert defaults.max_reply_bytes == 16 * 1024 * 1024
    turned_off = settings_from(parse(["services.calculator", "--default-time-limit", "none"]))
    assert turned_off.default_time_limit is None
    with pytest.raises(SystemExit):
        parse(["services.calculator", "--drain-timeout", "none"])  # a stop is always bounded


def test_every_option_is_in_the_guide_with_its_default() -> None:
    """docs/worker.md's table lists each option rpc-worker offers, with its default."""
    from rpc_redis.cli import worker_parser

    rows = (REPOSITORY / "docs" / "worker.md").read_text().splitlines()
    table = {
        re.findall(r"--[a-z-]+", row.split("|")[1])[0]: row.split("|")[2]
        for row in rows
        if row.startswith("| `--")
    }
    for action in worker_parser()._actions:
        for flag in action.option_strings:
            if not flag.startswith("--") or flag in ("--help", "--version"):
                continue
            if flag.startswith("--no-"):
                continue  # shown with its positive form: `--x` / `--no-x`
            assert flag in table, f"docs/worker.md's option table lacks {flag}"
            if isinstance(action.default, (int, float)) and not isinstance(action.default, bool):
                shown = str(action.default).removesuffix(".0")
                assert shown in table[flag].replace(",", ""), (flag, table[flag])
