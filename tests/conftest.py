"""Fixtures: real redis-server processes from rpc_redis.testing, stopped by pid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

pytest_plugins = ["rpc_redis.testing", "rpc_redis.topologies.fixtures"]

REPOSITORY = Path(__file__).resolve().parent.parent
# Subprocesses (rpc-worker, the demo) import services/ from the repository root.
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH", "")])
)


def module_output(*arguments: str, timeout: float) -> str:
    """``python -m <arguments>`` run in the repository (a benchmark, the chaos or fuzz
    run): what it printed, once it has exited 0."""
    done = subprocess.run(
        [sys.executable, "-m", *arguments],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout
