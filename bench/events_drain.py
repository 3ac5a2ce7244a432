"""A durable burst that waits, drained: the worker's CPU per event beside the floor's.

    python -m bench.events_drain [--events N] [--rounds R] [--handler rpush|noop]

Each round emits N events while nothing consumes them, starts a consumer on them
(an ``rpc-worker`` serving ``bench.drain_service``, or the floor's bare loop from
``bench/events_floor.py``), and measures its CPU from the moment it has taken its
first event until its group holds none pending and none unread. Floor and worker go
in alternating rounds. ``--handler noop`` leaves only what the worker itself does per
event (the floor then only reads and acknowledges); ``rpush`` (the default) adds the
events rows' handler, an RPUSH on a connection of its own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis

from rpc_redis import Client
from rpc_redis.embedded import EmbeddedRedis
from rpc_redis.events import wire
from rpc_redis.testing import WorkerProcess

from .drain_service import ACK
from .stats import cpu_seconds

REPOSITORY = Path(__file__).resolve().parent.parent
TOPIC = "drain"
GROUP = "bench_drain"  # the service's name: its consumer group, and the floor's
PAYLOAD = "x" * 100


def group_state(connection: redis.Redis, stream: str) -> dict[str, object] | None:
    try:
        groups = connection.xinfo_groups(stream)
    except redis.ResponseError:
        return None  # no stream yet
    return next((g for g in groups if g["name"] == GROUP.encode()), None)


def drain_once(url: str, system: str, events: int, handler: str) -> float:
    """One round: the consumer's CPU µs per event."""
    connection = redis.Redis.from_url(url, socket_timeout=None)
    stream = wire.stream_key(TOPIC, "rpc")
    connection.delete(stream, ACK)
    with Client(url) as client:
        for _ in range(events):
            client.emit(TOPIC, PAYLOAD)
    last = connection.xinfo_stream(stream)["last-generated-id"]
    env = {**os.environ, "RPC_REDIS_URL": url, "BENCH_DRAIN_HANDLER": handler}
    worker: WorkerProcess | None = None
    floor: subprocess.Popen[bytes] | None = None
    if system == "rpc":
        args = ["bench.drain_service", "--redis-url", url, "--log-level", "WARNING"]
        worker = WorkerProcess(args, cwd=REPOSITORY, env=env).start(ready_timeout=0)
        pid = worker.pid
    else:
        ack = ACK if handler == "rpush" else "-"
        floor = subprocess.Popen(
            [sys.executable, "-m", "bench.events_floor", "consumer", url, stream, GROUP, ack],
            cwd=REPOSITORY,
            stdout=subprocess.DEVNULL,
        )
        pid = floor.pid
    try:
        deadline = time.monotonic() + 60
        while (state := group_state(connection, stream)) is None or state[
            "last-delivered-id"
        ] == b"0-0":
            assert time.monotonic() < deadline, "the consumer took nothing"
            time.sleep(0.0005)
        cpu = cpu_seconds(pid)
        skipped = len(connection.xrange(stream, "-", state["last-delivered-id"]))
        while not (state["pending"] == 0 and state["last-delivered-id"] == last):
            assert time.monotonic() < deadline, "the consumer did not drain the stream"
            time.sleep(0.002)
            state = group_state(connection, stream)
            assert state is not None
        cpu = cpu_seconds(pid) - cpu
    finally:
        if worker is not None:
            assert worker.stop() == 0
        if floor is not None:
            floor.terminate()
            floor.wait(10)
        connection.close()
    return cpu / (events - skipped) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.events_drain", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--handler", choices=("rpush", "noop"), default="rpush")
    args = parser.parse_args(argv)
    cpu: dict[str, list[float]] = {"floor": [], "rpc": []}
    with EmbeddedRedis() as server:
        for round_number in range(args.rounds):
            for system in ("floor", "rpc"):
                each = drain_once(server.url, system, args.events, args.handler)
                cpu[system].append(each)
                print(f"round {round_number} {system:<5} {each:6.1f} µs of CPU per event")
    floor, ours = statistics.median(cpu["floor"]), statistics.median(cpu["rpc"])
    print(
        f"median CPU per event, {args.handler} handler: worker {ours:.1f} µs, "
        f"floor {floor:.1f} µs ({ours / floor:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
