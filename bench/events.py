"""Events and streams, each path beside its own raw floor, in the same run on one Redis.

- pub/sub: ``client.publish`` to a subscribed rpc-worker whose handler RPUSHes an
  acknowledgement, against a bare PUBLISH to a bare SUBSCRIBE loop that does the same;
- durable events: ``client.emit`` to a consumer group read by an rpc-worker, against a
  bare XADD to a bare XREADGROUP loop that RPUSHes and XACKs;
- streamed results: ``proxy.stream.items(n)`` from a generator method, against a bare
  loop that RPUSHes each item to a list the caller BLPOPs, one by one.

Latency: one caller, one event (or one 10-item stream) at a time, until it is handled
(or read whole). Throughput: a burst of events sent one after another, until every
one is handled; a long stream read as fast as it comes. Floor and rpc rows are measured
in alternating rounds, so a drifting load on a shared machine falls on both alike: a
latency ratio is of the medians of all samples, a throughput ratio the median of the
rounds' ratios (each rpc round against the floor round just before it), which a burst
of load on another process cannot sway the way it sways one round's total.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from rpc_redis import Client
from rpc_redis.testing import WorkerProcess

from . import stats
from .event_service import DURABLE_ACK, PUBSUB_ACK
from .stats import cpu_seconds

REPOSITORY = Path(__file__).resolve().parent.parent
PAYLOAD = "x" * 100
# Alternating rounds of floor and rpc-redis, per kind of row. A throughput ratio is the
# median of the rounds' own ratios, which on a 2-core machine shared with other work
# spread from 0.6x to 1.4x: sixteen rounds of a 2,500-event burst pin the median down
# where eight left it to swing by a tenth from run to run.
ROUNDS = {"latency": 8, "throughput": 16}
STREAM_LATENCY_ITEMS = 10
LATENCY_TARGET = 1.3
THROUGHPUT_TARGET = 0.8

FLOOR_CHANNEL = "floor:events:channel"
FLOOR_STREAM = "floor:events:stream"
FLOOR_STREAMER = "floor:events:streamer"
FLOOR_PUBSUB_ACK = "floor:ack:pubsub"
FLOOR_DURABLE_ACK = "floor:ack:durable"


@dataclass
class EventRow(stats.Latencies):
    path: str  # "pub/sub", "durable", "stream"
    kind: str  # "latency" or "throughput"
    system: str  # "floor" or "rpc"
    count: int = 0  # events, or stream items
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)
    rounds: list[float] = field(default_factory=list, repr=False)  # each round's rate
    worker_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


class EventBench:
    """The floor processes, one rpc-worker serving ``bench.event_service``, the callers."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.redis = redis.Redis.from_url(url, socket_timeout=None)
        self.client = Client(url, timeout=30)
        self.floors: dict[str, subprocess.Popen[bytes]] = {}
        self.worker: WorkerProcess | None = None

    def start(self) -> None:
        commands = {
            "pub/sub": ["pubsub", self.url, FLOOR_CHANNEL, FLOOR_PUBSUB_ACK],
            "durable": ["consumer", self.url, FLOOR_STREAM, "floor", FLOOR_DURABLE_ACK],
            "stream": ["streamer", self.url, FLOOR_STREAMER],
        }
        for path, arguments in commands.items():
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.events_floor", *arguments],
                cwd=REPOSITORY,
                stdout=subprocess.PIPE,
            )
            assert process.stdout is not None
            process.stdout.readline()  # "floor ready"
            self.floors[path] = process
        env = {**os.environ, "RPC_REDIS_URL": self.url}
        args = ["bench.event_service", "--redis-url", self.url, "--log-level", "WARNING"]
        self.worker = WorkerProcess(args, cwd=REPOSITORY, env=env).start(ready_timeout=0)
        # Warm-ups that also prove each path serves: the subscription is up once a
        # publish reaches one subscriber.
        deadline = time.monotonic() + 30
        while self.client.publish("bench", PAYLOAD) == 0:
            assert time.monotonic() < deadline, "the rpc-worker did not subscribe"
            time.sleep(0.01)
        self.redis.delete(PUBSUB_ACK)
        for path in self.floors:
            for system in ("floor", "rpc"):
                self.send(path, system, latency=True)

    def stop(self) -> list[int]:
        codes = []
        for process in self.floors.values():
            process.terminate()
            codes.append(process.wait(10))
            if process.stdout is not None:
                process.stdout.close()
        if self.worker is not None:
            codes.append(self.worker.stop())
        self.client.close()
        self.redis.close()
        return codes

    def pid(self, system: str, path: str) -> int:
        if system == "floor":
            return self.floors[path].pid
        assert self.worker is not None
        return self.worker.pid

    # -- one path, one event ---------------------------------------------------------

    def send(self, path: str, system: str, *, latency: bool, count: int = 1) -> int:
        """Send ``count`` events (or one stream of ``count`` items), and wait until
        they are handled (or read); the events or items it took."""
        if path == "stream":
            return self._stream(system, count if not latency else STREAM_LATENCY_ITEMS)
        ack = {
            ("pub/sub", "floor"): FLOOR_PUBSUB_ACK,
            ("pub/sub", "rpc"): PUBSUB_ACK,
            ("durable", "floor"): FLOOR_DURABLE_ACK,
            ("durable", "rpc"): DURABLE_ACK,
        }[(path, system)]
        send = self._sender(path, system)
        for _ in range(count):
            send()
        self._wait_for_acks(ack, count)
        return count

    def _sender(self, path: str, system: str) -> Callable[[], object]:
        if (path, system) == ("pub/sub", "floor"):
            return lambda: self.redis.publish(FLOOR_CHANNEL, PAYLOAD)
        if (path, system) == ("pub/sub", "rpc"):
            return lambda: self.client.publish("bench", PAYLOAD)
        if (path, system) == ("durable", "floor"):
            return lambda: self.redis.xadd(FLOOR_STREAM, {"event": PAYLOAD})
        return lambda: self.client.emit("bench", PAYLOAD)

    def _wait_for_acks(self, ack: str, count: int) -> None:
        taken = 0
        while taken < count:
            pipe = self.redis.pipeline(transaction=False)
            pipe.blpop([ack], 30)
            pipe.lpop(ack, count)
            popped, more = pipe.execute()
            assert popped is not None, f"no acknowledgement on {ack}"
            taken += 1 + len(more or [])

    def _stream(self, system: str, items: int) -> int:
        if system == "rpc":
            got = sum(1 for _ in self.client.proxy("bench_events").stream.items(items, PAYLOAD))
            assert got == items
            return got
        reply_key = f"floor:stream:reply:{uuid.uuid4().hex}"
        self.redis.lpush(FLOOR_STREAMER, f"{reply_key} {items} {PAYLOAD}")
        for _ in range(items):
            assert self.redis.blpop([reply_key], 30) is not None
        return items

    # -- measuring ---------------------------------------------------------------------

    @contextmanager
    def measuring(self, row: EventRow) -> Iterator[None]:
        pid = self.pid(row.system, row.path)
        cpu = cpu_seconds(pid)
        started = time.perf_counter()
        yield
        row.seconds += time.perf_counter() - started
        row.worker_cpu += cpu_seconds(pid) - cpu

    def run(self, row: EventRow, amount: int) -> None:
        """One round of a row: ``amount`` latency samples, or a burst (or stream) of
        ``amount`` events (or items)."""
        seconds = row.seconds
        with self.measuring(row):
            if row.kind == "latency":
                for _ in range(amount):
                    started = time.perf_counter()
                    row.count += self.send(row.path, row.system, latency=True)
                    row.latencies.append(time.perf_counter() - started)
            else:
                sent = self.send(row.path, row.system, latency=False, count=amount)
                row.count += sent
        if row.kind == "throughput":
            row.rounds.append(sent / (row.seconds - seconds))


def measure(
    url: str, quick: bool
) -> tuple[list[EventRow], list[tuple[str, str, str]], list[bool], list[int]]:
    """Every row, the targets (name, value, goal) and whether each is met, and the exit
    codes of the processes it ran."""
    samples = 60 if quick else 1000
    burst = {"pub/sub": 200 if quick else 40_000, "durable": 200 if quick else 40_000}
    burst["stream"] = 2000 if quick else 100_000
    bench = EventBench(url)
    rows: list[EventRow] = []
    try:
        bench.start()
        for path in ("pub/sub", "durable", "stream"):
            for kind in ("latency", "throughput"):
                pair = [EventRow(path, kind, "floor"), EventRow(path, kind, "rpc")]
                amount = samples if kind == "latency" else burst[path]
                rounds = ROUNDS[kind]
                for _ in range(rounds):
                    for row in pair:
                        bench.run(row, max(amount // rounds, 1))
                rows += pair
    finally:
        codes = bench.stop()
    targets, met = [], []
    for path in ("pub/sub", "durable", "stream"):
        floor_latency, rpc_latency, floor_rate, rpc_rate = (row for row in rows if row.path == path)
        latency_ratio = rpc_latency.median_us / floor_latency.median_us
        rate_ratio = throughput_ratio(rpc_rate, floor_rate)
        what = {"pub/sub": "publish -> handler", "durable": "emit -> handler"}.get(
            path, f"a {STREAM_LATENCY_ITEMS}-item stream"
        )
        targets.append(
            (
                f"{path}: {what} median latency / floor",
                f"{latency_ratio:.2f}",
                f"<= {LATENCY_TARGET}",
            )
        )
        unit = "items" if path == "stream" else "events"
        targets.append(
            (f"{path}: {unit} per second / floor", f"{rate_ratio:.2f}", f">= {THROUGHPUT_TARGET}")
        )
        met += [latency_ratio <= LATENCY_TARGET, rate_ratio >= THROUGHPUT_TARGET]
    return rows, targets, met, codes


def throughput_ratio(row: EventRow, floor: EventRow) -> float:
    """The median of the rounds' ratios: each round against its floor's, just before."""
    return statistics.median(
        ours / base for ours, base in zip(row.rounds, floor.rounds, strict=True)
    )


def table(rows: list[EventRow]) -> str:
    header = (
        f"{'path':<8} {'kind':<10} {'system':<6} {'count':>7} {'per s':>9} {'median µs':>10} "
        f"{'p99 µs':>9} {'ratio':>6} {'worker cpu µs/each':>18}"
    )
    lines = [header, "-" * len(header)]
    floors = {(row.path, row.kind): row for row in rows if row.system == "floor"}
    for row in rows:
        base = floors[(row.path, row.kind)]
        if row.kind == "latency":
            ratio = row.median_us / base.median_us if base.median_us else 0.0
        else:
            ratio = throughput_ratio(row, base)
        each = row.worker_cpu / row.count * 1e6 if row.count else 0.0
        lines.append(
            f"{row.path:<8} {row.kind:<10} {row.system:<6} {row.count:>7} {row.rate:>9.0f} "
            f"{row.median_us:>10.0f} {row.p99_us:>9.0f} {ratio:>6.2f} {each:>18.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.events [--quick]``: the events' rows alone (``python -m bench``
    runs them too, after the calls' rows)."""
    import argparse

    from rpc_redis.embedded import EmbeddedRedis

    parser = argparse.ArgumentParser(prog="python -m bench.events", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny configuration")
    quick = parser.parse_args(argv).quick
    with EmbeddedRedis() as server:
        rows, targets, met, codes = measure(server.url, quick)
    print(table(rows))
    print("targets (ratios from this run):")
    for (name, value, goal), ok in zip(targets, met, strict=True):
        print(f"  {'MET ' if ok else 'MISS'}  {name}: {value} (target {goal})")
    print(f"exit codes of the events' floors and worker: {codes}")
    return 0 if all(code == 0 for code in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
