"""pytest fixtures and helpers for testing services against a real Redis.

Enable them in a ``conftest.py`` with ``pytest_plugins = ["rpc_redis.testing"]``.
Every server and process started here is stopped by its pid when its fixture ends.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import redis

from .embedded import EmbeddedRedis
from .service import Service
from .worker import Worker, WorkerThread


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One embedded redis-server for the whole session."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """The session server's URL, emptied (FLUSHALL) before each test."""
    with redis.Redis.from_url(redis_server.url) as connection:
        connection.flushall()
    return redis_server.url


@pytest.fixture
def fresh_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server of the test's own, for tests that kill or restart it."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_connection(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the test's database, for looking at keys."""
    with redis.Redis.from_url(redis_url) as connection:
        yield connection


def wait_until(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll a cheap condition that has no event to wait on (a Redis key, a counter).

    Bounded: raises AssertionError naming ``what`` once ``timeout`` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or condition}")
        time.sleep(0.005)


def pid_alive(pid: int) -> bool:
    """Whether a process still exists: to check that what a test started has stopped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def serve_in_thread(
    service: Service | Sequence[Service], url: str | None = None, **options: object
) -> WorkerThread:
    """A started in-process worker; use as ``with serve_in_thread(...) as worker:``.
    ``url`` or ``redis=`` (a client or pool you built) says where Redis is."""
    return WorkerThread(Worker(service, url, **options))  # type: ignore[arg-type]


def calls_in_flight(url: str, client_name: str, queue: str) -> int:
    """Calls of one client a worker has taken: the client waits on replies, the queue is empty.

    A call is pushed before its client blocks on the reply key, so once ``n`` of the
    client's connections are blocked and ``queue`` is empty, workers hold all ``n``.
    """
    with redis.Redis.from_url(url) as connection:
        if connection.llen(queue):
            return 0
        return sum(
            1
            for client in connection.client_list()
            if client.get("name") == client_name and client.get("cmd") == "blpop"
        )


def rpc_worker_command() -> list[str]:
    """The installed ``rpc-worker`` script next to this Python, else ``python -m``."""
    script = Path(sys.executable).with_name("rpc-worker")
    if script.exists():
        return [str(script)]
    found = shutil.which("rpc-worker")
    return [found] if found else [sys.executable, "-m", "rpc_redis.cli"]


class WorkerProcess:
    """A real ``rpc-worker`` process whose log lines a test can wait for.

    >>> with WorkerProcess(["services.calculator", "--redis-url", url]) as worker:
    ...     worker.wait_for_line("received cat")
    """

    READY = re.compile(r"rpc-worker serving ")

    def __init__(
        self,
        args: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.args = list(args)
        self.cwd = cwd
        self.env = env
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self._new_line = threading.Condition()
        self._reader: threading.Thread | None = None

    def start(self, ready_timeout: float = 15.0) -> WorkerProcess:
        """Start the process and wait for its startup line (``ready_timeout`` 0: don't).

        A second start while the first process runs is refused: it would lose track of
        that process, which nobody would then stop."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(
                f"rpc-worker (pid {self.process.pid}) is running: stop() it before starting "
                "again, or make another WorkerProcess"
            )
        if self.process is not None:
            self.wait()  # the last one's output, read to its end
            self.lines = []
        self.process = subprocess.Popen(
            [*rpc_worker_command(), *self.args],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read_lines, daemon=True)
        self._reader.start()
        if ready_timeout:
            self.wait_for_line(self.READY, ready_timeout)
        return self

    def _read_lines(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            with self._new_line:
                self.lines.append(line.rstrip("\n"))
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(
        self, pattern: str | re.Pattern[str], timeout: float = 10.0, *, count: int = 1
    ) -> str:
        """Block until ``count`` log lines match (returning the last), the process exits,
        or the timeout passes."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        seen = 0
        matched = 0
        with self._new_line:
            while True:
                for line in self.lines[seen:]:
                    if regex.search(line):
                        matched += 1
                        if matched == count:
                            return line
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                exited = self.process is not None and self.process.poll() is not None
                if remaining <= 0 or (exited and not self._reader_alive()):
                    raise AssertionError(
                        f"no line matching {regex.pattern!r} from rpc-worker "
                        f"(exit code {self.process.poll() if self.process else None}):\n"
                        f"{self.output}"
                    )
                self._new_line.wait(min(remaining, 0.5))

    def _reader_alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit and its output to be read; its exit code."""
        assert self.process is not None
        code = self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        if self.process.stdout is not None and not self._reader_alive():
            self.process.stdout.close()
        return code

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM by pid and wait; SIGKILL if it does not exit in time."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
        return self.wait(timeout)

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
