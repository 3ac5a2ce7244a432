"""Configuration mistakes are not outages: one line and exit 2, never a retry loop; and no
password ever shows, in a log line, an error or a command line."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import redis
import trustme

from rpc_redis import Service, Worker, WorkerThread
from rpc_redis.embedded import EmbeddedRedis, free_port
from rpc_redis.errors import RpcConfigurationError
from rpc_redis.testing import WorkerProcess
from tests.conftest import REPOSITORY

PASSWORD = "hunter2-s3cret"
USER_PASSWORD = "correct-h0rse"


@pytest.fixture(scope="module")
def guarded() -> Iterator[EmbeddedRedis]:
    """A server with a password and two ACL users: one that may do anything, and one
    that may not pop (as an ACL written for clients only would have it)."""
    with EmbeddedRedis() as server:
        with redis.Redis(host=server.host, port=server.port) as admin:
            admin.execute_command(
                "ACL", "SETUSER", "app", "on", f">{USER_PASSWORD}", "~*", "&*", "+@all"
            )
            admin.execute_command(
                "ACL", "SETUSER", "caller", "on", f">{USER_PASSWORD}", "~*", "&*", "+@all",
                "-blpop", "-blmove",
            )  # fmt: skip
            admin.config_set("requirepass", PASSWORD)
        yield server


def address(server: EmbeddedRedis) -> str:
    return f"{server.host}:{server.port}"


@contextlib.contextmanager
def tls_endpoint() -> Iterator[int]:
    """A TLS port whose certificate no client here trusts: every handshake fails."""
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            with contextlib.suppress(OSError), connection:
                connection.settimeout(5)
                context.wrap_socket(connection, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def run_worker(url: str, *options: str) -> WorkerProcess:
    """rpc-worker against ``url``, to its exit (bounded); its output lines are kept."""
    worker = WorkerProcess(["services.calculator", "--redis-url", url, *options], cwd=REPOSITORY)
    worker.start(ready_timeout=0)
    try:
        worker.wait(timeout=20)
    finally:
        worker.stop()
    return worker


def assert_one_error_line(worker: WorkerProcess, cause: str) -> None:
    assert worker.process is not None and worker.process.returncode == 2, worker.output
    errors = [line for line in worker.lines if "error" in line.lower()]
    assert len(errors) == 1, worker.output
    assert errors[0].startswith("rpc-worker: error: "), worker.output
    assert cause in errors[0], worker.output
    assert "Traceback" not in worker.output and "retrying" not in worker.output, worker.output
    assert PASSWORD not in worker.output and USER_PASSWORD not in worker.output


def test_a_malformed_url_is_one_line_and_exit_2() -> None:
    worker = run_worker(f"redis://:{PASSWORD}@localhost:notaport/0")
    assert_one_error_line(worker, "bad Redis URL redis://:***@localhost:notaport/0")
    assert len(worker.lines) == 1


def test_a_database_the_server_lacks_is_one_line_and_exit_2(redis_url: str) -> None:
    worker = run_worker(redis_url.rsplit("/", 1)[0] + "/99")
    assert_one_error_line(worker, "DB index is out of range")
    assert len(worker.lines) == 1


@pytest.mark.parametrize(
    ("credentials", "cause"),
    [
        (":wrong-password@", "invalid username-password pair"),
        ("", "authenticat"),  # no password at all
        (f"nobody:{USER_PASSWORD}@", "invalid username-password pair"),
    ],
    ids=["wrong-password", "no-password", "unknown-user"],
)
def test_credentials_redis_refuses_are_one_line_and_exit_2(
    guarded: EmbeddedRedis, credentials: str, cause: str
) -> None:
    worker = run_worker(f"redis://{credentials}{address(guarded)}/0")
    assert_one_error_line(worker, cause)
    assert len(worker.lines) == 1


@pytest.mark.parametrize("receiving", ["--receive-in-threads", "--no-receive-in-threads"])
def test_a_command_the_acl_forbids_is_one_line_and_exit_2(
    guarded: EmbeddedRedis, receiving: str
) -> None:
    worker = run_worker(f"redis://caller:{USER_PASSWORD}@{address(guarded)}/0", receiving)
    assert_one_error_line(worker, "no permissions to run the 'blpop' command")


def test_a_failed_tls_handshake_is_one_line_and_exit_2() -> None:
    with tls_endpoint() as port:
        worker = run_worker(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0")
    assert_one_error_line(worker, "certificate verify failed")
    assert len(worker.lines) == 1


def test_a_supervisor_whose_workers_meet_a_configuration_error_exits_2(
    guarded: EmbeddedRedis,
) -> None:
    worker = run_worker(f"redis://:wrong-password@{address(guarded)}/0", "--processes", "2")
    assert worker.process is not None and worker.process.returncode == 2, worker.output
    assert "met a configuration error" in worker.output
    assert "Traceback" not in worker.output


def test_in_process_a_configuration_error_is_raised_from_start(guarded: EmbeddedRedis) -> None:
    worker = Worker(Service("nothing"), f"redis://:wrong-password@{address(guarded)}/0")
    with pytest.raises(RpcConfigurationError, match="invalid username-password pair") as caught:
        WorkerThread(worker).start()
    assert "wrong-password" not in str(caught.value)
    assert worker.stopped.is_set()


# -- no password shows ---------------------------------------------------------------


def url_forms(server: EmbeddedRedis) -> list[str]:
    """Every way a URL carries a password: the user part, with and without a user, and
    the query (as a unix socket's URL must)."""
    return [
        f"redis://:{PASSWORD}@{address(server)}/0",
        f"redis://app:{USER_PASSWORD}@{address(server)}/0",
        f"redis://{address(server)}/0?password={PASSWORD}",
    ]


@pytest.mark.parametrize("form", range(3), ids=["password", "user-password", "query"])
def test_no_password_in_the_lines_of_a_worker_or_its_supervisor(
    guarded: EmbeddedRedis, form: int
) -> None:
    url = url_forms(guarded)[form]
    args = ["services.calculator", "--redis-url", url, "--processes", "2"]
    with WorkerProcess(args, cwd=REPOSITORY) as supervisor:
        supervisor.wait_for_line("rpc-worker serving", count=2)
        children = [
            int(pid) for pid in supervisor.lines[0].split("pids ")[1].rstrip(")").split(", ")
        ]
        for child in children:
            with open(f"/proc/{child}/cmdline", "rb") as cmdline:
                command_line = cmdline.read()
            assert PASSWORD.encode() not in command_line
            assert USER_PASSWORD.encode() not in command_line
        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait(20) == 0
    assert "***" in supervisor.output
    assert PASSWORD not in supervisor.output and USER_PASSWORD not in supervisor.output


def test_no_password_in_an_outage_line() -> None:
    url = f"redis://app:{USER_PASSWORD}@127.0.0.1:{free_port()}/0"
    worker = WorkerProcess(["services.calculator", "--redis-url", url], cwd=REPOSITORY)
    worker.start(ready_timeout=0)
    try:
        line = worker.wait_for_line("cannot reach Redis at")
        assert "redis://app:***@127.0.0.1" in line
    finally:
        assert worker.stop() == 0
    assert USER_PASSWORD not in worker.output


def test_no_password_in_rpc_admin_output(guarded: EmbeddedRedis) -> None:
    for url in [*url_forms(guarded), f"redis://:wrong-password@{address(guarded)}/0"]:
        finished = subprocess.run(
            [
                sys.executable,
                "-m",
                "rpc_redis.admin",
                "dead",
                "count",
                "calculator",
                "--redis-url",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ},
        )
        assert PASSWORD not in finished.stdout + finished.stderr
        assert USER_PASSWORD not in finished.stdout + finished.stderr
        assert "wrong-password" not in finished.stderr
    assert finished.returncode == 2, finished.stderr
    assert finished.stderr.count("\n") == 1
    assert "invalid username-password pair" in finished.stderr


def test_the_guarded_server_serves_the_right_credentials(guarded: EmbeddedRedis) -> None:
    """The URLs above are right: with them, a worker serves (so the tests that find no
    password in its lines looked at a working worker)."""
    for url in url_forms(guarded):
        with redis.Redis.from_url(url) as connection:
            assert connection.ping()
