"""The benchmark runs end to end in its tiny configuration and prints its table.

Timing belongs to the benchmark, not to tests: nothing here checks a number.
"""

from __future__ import annotations

import re

from tests.conftest import module_output


def test_quick_benchmark_prints_its_table_and_targets() -> None:
    output = module_output("bench", "--quick", "--duration", "0.2", timeout=300)
    assert re.search(r"^machine: \d+ cores, .*Python 3\.\d+.*Redis \d+\.\d+", output, re.M)
    assert "noisy" in output
    for system in ("floor", "sync", "async"):
        assert re.search(rf"^latency\s+{system}\s+\S+.*\s1\s+1\s+100 B\s+\d+", output, re.M)
        assert re.search(rf"^throughput\s+{system}\s+\S+\s+8\s+2\s+100 B\s+\d+", output, re.M)
    assert re.search(r"^latency\s+sync\s+async def\s+1\s+1\s+100 B", output, re.M)
    # 7 of the calls, and 2 for each of pub/sub, durable events and streams.
    assert len(re.findall(r"^  (MET |MISS)  ", output, re.M)) == 13
    events = output.split("events and streams (", 1)[1].split("\n\n", 1)[0]
    for path in ("pub/sub", "durable", "stream"):
        for kind in ("latency", "throughput"):
            for system in ("floor", "rpc"):
                assert re.search(rf"^{path}\s+{kind}\s+{system}\s+\d+", events, re.M), events
    assert re.search(r"^exit codes of the events' floors and worker: \[0(, 0){3}\]$", output, re.M)
    assert re.search(r"keys left in Redis: \d+", output)
    assert re.search(r"^validation \(def, validated against def.*µs median latency$", output, re.M)
    assert re.search(r"^worker path per call, in process .*µs for validation\)$", output, re.M)
    for serving in ("loop", "reliable", "validated"):
        assert re.search(rf"^latency\s+sync\s+def, {serving}\s+1\s+1\s+100 B\s+\d+", output, re.M)
    # floor x1, floor x2, rpc-worker x1, x2, async x1, loop x1, reliable x1 and validated
    # x1: all stopped
    assert re.search(r"^workers' exit codes: \[0(, 0){9}\]$", output, re.M)
    # Beside each, the floor on the same topology: through the TLS proxy, on a cluster.
    for topology in ("tls", "cluster"):
        section = output.split(f"topology: {topology} (", 1)[1].split("\n\n", 1)[0]
        for kind, callers in (("latency", 1), ("throughput", 8)):
            for system in ("floor", "sync", "async"):
                line = rf"^{kind}\s+{system}\s+\S+\s+{callers}\s+1\s+100 B\s+\d+"
                assert re.search(line, section, re.M), section
    assert re.search(r"^workers' exit codes on the other topologies: \[0(, 0){3}\]$", output, re.M)


def test_the_drain_benchmark_sets_the_worker_beside_its_floor() -> None:
    output = module_output("bench.events_drain", "--events", "300", "--rounds", "1", timeout=120)
    for system in ("floor", "rpc"):
        assert re.search(rf"^round 0 {system}\s+\d+\.\d µs of CPU per event$", output, re.M)
    line = r"^median CPU per event, rpush handler: worker [\d.]+ µs, floor [\d.]+ µs \([\d.]+x\)$"
    assert re.search(line, output, re.M), output
