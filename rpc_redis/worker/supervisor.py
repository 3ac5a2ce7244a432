"""``rpc-worker --processes P``: P worker processes under one command.

The supervisor starts P children (the same command, one process each), forwards
SIGTERM and SIGINT to them, reaps them, and starts a new child in place of one that
died unexpectedly. It exits once every child has exited after a stop: 0 if they all
exited 0. A child that exits 2 met a configuration error (a wrong password...) that
a restart cannot mend: the supervisor stops the others and exits 2 too.

The Redis URL reaches the children in their environment, not on their command line,
where ``ps`` would show its password to anyone on the machine. With metrics, the
children write theirs into a directory of the supervisor's, which serves them all at
one port (``metrics.py``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

from .. import metrics

logger = logging.getLogger("rpc_redis.supervisor")

RESTART_BACKOFF_CAP = 10.0
EXIT_CONFIGURATION = 2
URL_VARIABLE = "RPC_REDIS_URL"


class Supervisor:
    def __init__(
        self,
        child_command: Sequence[str],
        processes: int,
        *,
        redis_url: str | None = None,
        metrics_address: tuple[str, int] | None = None,
    ) -> None:
        """``metrics_address``: (host, port) to serve every child's metrics at."""
        self.child_command = list(child_command)
        self.processes = processes
        self.environment = dict(os.environ)
        if redis_url is not None:
            self.environment[URL_VARIABLE] = redis_url
        self.metrics_address = metrics_address
        self.metrics_directory: str | None = None
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self._signals_seen = 0
        self._restart_delay = 0.5

    def run(self) -> int:
        stop_serving_metrics = self._serve_metrics()
        try:
            return self._supervise()
        finally:
            if stop_serving_metrics is not None:
                stop_serving_metrics()
            if self.metrics_directory is not None:
                shutil.rmtree(self.metrics_directory, ignore_errors=True)

    def _serve_metrics(self) -> Callable[[], None] | None:
        """Serve the children's metrics (written into a directory of ours) at one port."""
        if self.metrics_address is None:
            return None
        self.metrics_directory = tempfile.mkdtemp(prefix="rpc-redis-metrics-")
        self.environment[metrics.MULTIPROCESS_VARIABLE] = self.metrics_directory
        return metrics.serve_processes(self.metrics_directory, *self.metrics_address)

    def _supervise(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        for _ in range(self.processes):
            self._start_child()
        logger.info(
            "rpc-worker supervising %d processes (pids %s)",
            self.processes,
            ", ".join(map(str, self.children)),
        )
        exit_code = 0
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            child = self.children.pop(pid, None)
            if child is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            child.returncode = code
            if self.metrics_directory is not None:
                metrics.process_exited(self.metrics_directory, pid)
            if self.stopping:
                exit_code = exit_code or (1 if code != 0 else 0)
                continue
            if code == EXIT_CONFIGURATION:
                logger.error("worker process %d met a configuration error; stopping", pid)
                self._stop_children(signal.SIGTERM)
                exit_code = EXIT_CONFIGURATION
                continue
            logger.error("worker process %d exited with %s; starting another", pid, code)
            time.sleep(self._restart_delay)
            self._restart_delay = min(self._restart_delay * 2, RESTART_BACKOFF_CAP)
            if not self.stopping:
                self._start_child()
        logger.info("all worker processes exited")
        return exit_code

    def _start_child(self) -> None:
        # A new session would keep a terminal's Ctrl-C from reaching the children twice.
        child = subprocess.Popen(self.child_command, start_new_session=True, env=self.environment)
        self.children[child.pid] = child

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals_seen += 1
        self._stop_children(signum if self._signals_seen == 1 else signal.SIGKILL)

    def _stop_children(self, signum: int) -> None:
        self.stopping = True
        forwarded = signum
        for pid in list(self.children):
            try:
                os.kill(pid, forwarded)
            except ProcessLookupError:
                pass


def child_command(argv: Sequence[str]) -> list[str]:
    """This command line without ``--processes`` and ``--redis-url`` (the URL goes in
    the children's environment), run as ``python -m rpc_redis.cli``."""
    stripped: list[str] = []
    skip_next = False
    for argument in argv:
        if skip_next:
            skip_next = False
            continue
        if argument in ("--processes", "--redis-url"):
            skip_next = True
            continue
        if argument.startswith(("--processes=", "--redis-url=")):
            continue
        stripped.append(argument)
    return [sys.executable, "-m", "rpc_redis.cli", *stripped]
