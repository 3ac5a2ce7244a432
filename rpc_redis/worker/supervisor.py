"""``rpc-worker --processes P``: P worker processes under one command.

The supervisor starts P children (the same command, one process each), forwards
SIGTERM and SIGINT to them, reaps them, and starts a new child in place of one that
died unexpectedly. It exits once every child has exited after a stop: 0 if they all
exited 0.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

logger = logging.getLogger("rpc_redis.supervisor")

RESTART_BACKOFF_CAP = 10.0


class Supervisor:
    def __init__(self, child_command: Sequence[str], processes: int) -> None:
        self.child_command = list(child_command)
        self.processes = processes
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self._signals_seen = 0
        self._restart_delay = 0.5

    def run(self) -> int:
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
            if self.stopping:
                exit_code = exit_code or (1 if code != 0 else 0)
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
        child = subprocess.Popen(self.child_command, start_new_session=True)
        self.children[child.pid] = child

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals_seen += 1
        self.stopping = True
        forwarded = signum if self._signals_seen == 1 else signal.SIGKILL
        for pid in list(self.children):
            try:
                os.kill(pid, forwarded)
            except ProcessLookupError:
                pass


def child_command(argv: Sequence[str]) -> list[str]:
    """This command line without ``--processes``, run as ``python -m rpc_redis.cli``."""
    stripped: list[str] = []
    skip_next = False
    for argument in argv:
        if skip_next:
            skip_next = False
            continue
        if argument == "--processes":
            skip_next = True
            continue
        if argument.startswith("--processes="):
            continue
        stripped.append(argument)
    return [sys.executable, "-m", "rpc_redis.cli", *stripped]
