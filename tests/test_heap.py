"""heap.py: a worker process gives large blocks back once it is done with them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rpc_redis.worker import heap

# Large blocks, all alive at once with small ones between them (messages and what they
# parse into), then freed: the heap keeps them unless they were mmap'd.
SCRIPT = """
import sys
from pathlib import Path
from rpc_redis.worker.heap import return_large_blocks
if sys.argv[1] == "fixed":
    assert return_large_blocks()
def rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
start = rss_mib()
first = bytearray(8 * 2**20); del first  # glibc now serves blocks up to 8 MiB from its heap
blocks, survivors = [], []
for _ in range(100):
    blocks.append(bytearray(b"x" * 2 * 2**20))
    survivors.append(bytearray(b"y" * 100_000))
del blocks
print(rss_mib() - start)
"""


def retained_mib(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_fixing_the_mmap_threshold_gives_large_blocks_back() -> None:
    # rpc-worker's platforms (Linux with glibc, as CI's) have mallopt: it must take.
    assert heap.return_large_blocks(), "mallopt(M_MMAP_THRESHOLD) was not taken"
    assert retained_mib("default") > 100  # what a worker kept after a burst of large messages
    assert retained_mib("fixed") < 30


def test_the_environment_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(heap.ENVIRONMENT_VARIABLE, "262144")
    assert heap.return_large_blocks() is False
