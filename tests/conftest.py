"""Fixtures: real redis-server processes from rpc_redis.testing, stopped by pid."""

from __future__ import annotations

import os
from pathlib import Path

pytest_plugins = ["rpc_redis.testing", "rpc_redis.topologies.fixtures"]

REPOSITORY = Path(__file__).resolve().parent.parent
# Subprocesses (rpc-worker, the demo) import services/ from the repository root.
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH", "")])
)
