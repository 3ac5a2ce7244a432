"""What a new user meets in the first ten minutes: the commands, the errors, the helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rpc_redis import Client, Service
from rpc_redis.embedded import find_cli_binary
from rpc_redis.testing import WorkerProcess, pid_alive, serve_in_thread
from tests.conftest import REPOSITORY


def test_a_second_start_of_a_worker_process_is_refused(redis_url: str) -> None:
    worker = WorkerProcess(["services.calculator", "--redis-url", redis_url], cwd=REPOSITORY)
    with worker:
        first = worker.pid
        with pytest.raises(RuntimeError, match=rf"rpc-worker \(pid {first}\) is running"):
            worker.start()
        assert worker.pid == first
    assert not pid_alive(first)
    with worker:  # once stopped, it may start again
        assert worker.pid != first
        with Client(redis_url, timeout=5) as client:
            assert client.proxy("calculator").add(1, 2) == 3


def test_options_may_come_before_the_modules(redis_url: str) -> None:
    args = ["--log-level", "debug", "--concurrency", "2", "services.calculator"]
    with WorkerProcess([*args, "--redis-url", redis_url], cwd=REPOSITORY) as worker:
        assert "concurrency 2 in threads" in worker.wait_for_line("rpc-worker serving")
        assert any(" DEBUG " in line for line in worker.lines)
        with Client(redis_url, timeout=5) as client:
            assert client.proxy("calculator").mul(6, 7) == 42


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("x = 1\ndef broken(:\n", ['broken_module.py", line 2', "SyntaxError: invalid syntax"]),
        (
            "import rpc_redis\nimport no_such_dependency_here\n",
            [
                "Traceback (most recent call last):",
                'broken_module.py", line 2, in <module>',
                "    import no_such_dependency_here",
                "ModuleNotFoundError: No module named 'no_such_dependency_here'",
            ],
        ),
        (
            "def f():\n    raise RuntimeError('boom')\nf()\n",
            ['broken_module.py", line 3, in <module>', "line 2, in f", "RuntimeError: boom"],
        ),
    ],
    ids=["syntax", "import", "raise"],
)
def test_an_error_inside_a_users_module_shows_its_file_line_and_traceback(
    tmp_path: Path, source: str, shown: list[str]
) -> None:
    (tmp_path / "broken_module.py").write_text(source)
    done = run_worker_in(tmp_path, "broken_module")
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0] == "rpc-worker: error: importing broken_module failed:"
    for text in shown:
        assert any(text in line for line in lines), done.stderr
    assert "importlib" not in done.stderr and "rpc_redis" not in done.stderr


def test_a_module_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    done = run_worker_in(tmp_path, "no_such_module_here.sub")
    assert done.returncode == 2
    assert done.stderr == "rpc-worker: error: No module named 'no_such_module_here'\n"


def run_worker_in(directory: Path, module: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rpc_redis.cli", module, "--redis-url", "redis://127.0.0.1:1/0"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_dotted_method_is_a_path_on_a_proxy(redis_url: str) -> None:
    service = Service("maths")

    @service.method(name="math.add")
    def add(a: int, b: int) -> int:
        return a + b

    with serve_in_thread(service, redis_url), Client(redis_url, timeout=5) as client:
        proxy = client.proxy("maths")
        assert proxy.math.add(1, 2) == 3
        assert client.call("maths", "math.add", [1, 2]) == 3
        assert client.call("maths", "math.add", {"a": 2, "b": 3}) == 5
        with client.batch("maths") as batch:
            total = batch.math.add(3, 4)
        assert total.result() == 7
        assert repr(proxy.math.add) == "<remote method math.add>"


def test_the_embedded_redis_cli_is_reachable() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rpc_redis.embedded", "cli", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and done.stdout.startswith("redis-cli ")
    on_path = Path(sys.executable).with_name("redis-cli")  # put there by the Makefile
    assert on_path.exists() and os.path.samefile(on_path, str(find_cli_binary()))
