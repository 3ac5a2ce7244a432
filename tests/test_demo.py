"""`make demo` runs: cats go through a real rpc-worker and come back in its log."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPOSITORY


def test_demo_sends_cats_and_shows_what_the_worker_logged() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.demo"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sent = re.findall(r"client sends cat (\w+), (\d+): ok: \1 received", done.stdout)
    logged = re.findall(r"server received cat (\w+) which is (\d+) years old", done.stdout)
    assert len(sent) == 5
    assert sorted(sent) == sorted(logged)
    assert "rpc-worker exited with 0" in done.stdout
    assert "stopped redis-server" in done.stdout
    assert "What next, from this directory:" in done.stdout
    assert "rpc-admin call calculator.add 1 2" in done.stdout
