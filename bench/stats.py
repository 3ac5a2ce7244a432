"""What every benchmark row reports the same way: median and p99 latency, a process's CPU."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def median_us(latencies: list[float]) -> float:
    return statistics.median(latencies) * 1e6 if latencies else 0.0


def p99_us(latencies: list[float]) -> float:
    if len(latencies) < 2:
        return median_us(latencies)
    return statistics.quantiles(latencies, n=100)[98] * 1e6


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Latencies:
    """A row's median and p99, in µs, of its ``latencies`` (seconds)."""

    latencies: list[float]

    @property
    def median_us(self) -> float:
        return median_us(self.latencies)

    @property
    def p99_us(self) -> float:
        return p99_us(self.latencies)
