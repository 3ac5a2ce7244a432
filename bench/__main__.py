"""The benchmark: rpc_redis next to the raw-Redis floor, in one run, on one Redis.

    python -m bench                 # the full run (several minutes)
    python -m bench --quick         # a tiny configuration, for a smoke test

Everything runs on this machine over loopback: one embedded redis-server, floor
workers (bench/floor.py) and rpc-worker processes (bench/service.py), and the callers
in this process. See BENCHMARKS.md for how to read the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

import rpc_redis
from rpc_redis import AsyncClient, Client
from rpc_redis.embedded import EmbeddedRedis
from rpc_redis.testing import WorkerProcess

from . import dispatch, events, floor, stats, topologies
from .stats import cpu_seconds
from .topologies import Topology

REPOSITORY = Path(__file__).resolve().parent.parent
PAYLOADS = {"100 B": "x" * 100, "100 KB": "x" * 100_000}
# Rows compared with each other are measured in this many alternating rounds.
ROUNDS = 5
# Ways to serve the plain-function service besides the default (receiving in threads).
# "validated": the same echo, its params checked against its type hints (validate=True).
SERVING = {"loop": ["--no-receive-in-threads"], "reliable": ["--reliable"], "validated": []}
TARGETS = {"bench": "service", "bench_async": "async_service", "bench_validated": "validated"}


@dataclass
class Row(stats.Latencies):
    kind: str  # "latency" or "throughput"
    system: str  # "floor", "sync", "async"
    callers: int
    workers: int
    payload: str
    handler: str = "def"  # the service method: "def" (threads) or "async def" (event loop)
    serving: str = ""  # how the worker serves it, if not as it does by default: see SERVING

    @property
    def queue(self) -> str:
        kind = ":async" if self.handler == "async def" else ""
        return f"rpc:bench:{self.workers}{kind}{self.serving and ':' + self.serving}"

    @property
    def service(self) -> str:
        if self.handler == "async def":
            return "bench_async"
        return "bench_validated" if self.serving == "validated" else "bench"

    calls: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)
    worker_cpu: float = 0.0
    client_cpu: float = 0.0
    redis_cpu: float = 0.0
    commands: int = 0

    @property
    def throughput(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def per_call(self, value: float) -> float:
        return value / self.calls * 1e6 if self.calls else 0.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def command_count(connection: redis.Redis) -> int:
    stats = connection.info("commandstats")
    return sum(
        int(value["calls"])
        for name, value in stats.items()
        if name not in ("cmdstat_info", "cmdstat_ping")
    )


class Bench:
    def __init__(self, topology: Topology, duration: float) -> None:
        self.topology = topology
        self.url = topology.url
        self.floor_url = topology.floor_url
        self.duration = duration
        self.admins = [redis.Redis.from_url(url) for url in topology.node_urls]
        self.floor_workers: dict[int, list[subprocess.Popen[bytes]]] = {}
        self.rpc_workers: dict[str, list[WorkerProcess]] = {}  # by queue
        # Connected once, before the first round measures: a TLS handshake costs the
        # caller milliseconds of CPU, which would be counted against a row's calls.
        self._floor_connections: dict[int, list[redis.Redis]] = {}
        self._clients: dict[int, Client] = {}
        self._stop_at = 0.0

    # -- processes -------------------------------------------------------------------

    def start_workers(
        self, counts: tuple[int, ...] = (1, 2), every_way: bool = True, concurrency: int = 64
    ) -> None:
        """Floor and rpc-worker processes, ``counts`` of each; ``every_way``: also the
        async def service and the other ways of serving (SERVING)."""
        for count in counts:
            queue = f"floor:{count}"
            self.floor_workers[count] = [
                subprocess.Popen(
                    [sys.executable, "-m", "bench.floor", self.floor_url, queue],
                    cwd=REPOSITORY,
                    stdout=subprocess.PIPE,
                )
                for _ in range(count)
            ]
            for process in self.floor_workers[count]:
                assert process.stdout is not None
                process.stdout.readline()  # "floor worker ready"
            served = [Row("", "", 0, count, "")]
            if count == 1 and every_way:
                served.append(Row("", "", 0, count, "", "async def"))
                served += [Row("", "", 0, count, "", serving=serving) for serving in SERVING]
            for row in served:
                target = "bench.service:" + TARGETS[row.service]
                args = [target, "--redis-url", self.url, "--queue", row.queue]
                args += ["--concurrency", str(concurrency), "--log-level", "WARNING"]
                args += SERVING.get(row.serving, [])
                self.rpc_workers[row.queue] = [
                    WorkerProcess(args, cwd=REPOSITORY).start(ready_timeout=0) for _ in range(count)
                ]
        # A warm-up call through each path also proves each worker is serving.
        for count in counts:
            for _ in range(count * 4):
                self.floor_call(count, "warm")
        with Client(self.url) as client:
            for queue, workers in self.rpc_workers.items():
                for _ in range(len(workers) * 4):
                    client.proxy("bench", queue=queue).echo("warm")

    def stop_workers(self) -> list[int]:
        codes = []
        for processes in self.floor_workers.values():
            for process in processes:
                process.terminate()
                codes.append(process.wait(10))
                if process.stdout is not None:
                    process.stdout.close()
        for workers in self.rpc_workers.values():
            codes.extend(worker.stop() for worker in workers)
        return codes

    def worker_pids(self, row: Row) -> list[int]:
        if row.system == "floor":
            return [process.pid for process in self.floor_workers[row.workers]]
        return [worker.pid for worker in self.rpc_workers[row.queue]]

    # -- one measurement -------------------------------------------------------------

    def floor_call(self, workers: int, payload: str, connection: redis.Redis | None = None) -> None:
        own = connection or redis.Redis.from_url(self.floor_url, socket_timeout=None)
        # In the queue's hash slot, as rpc-redis's sync client does: one node on a cluster.
        reply_key = f"floor:reply:{{floor:{workers}}}:{uuid.uuid4().hex}".encode()
        assert floor.call(own, f"floor:{workers}", reply_key, payload.encode()) == payload.encode()

    @contextmanager
    def measuring(self, row: Row) -> Iterator[None]:
        pids = self.worker_pids(row)
        self._stop_at = time.perf_counter() + self.duration
        worker_cpu = sum(cpu_seconds(pid) for pid in pids)
        redis_cpu = self.redis_cpu()
        commands = self.commands()
        client_cpu = time.process_time()
        started = time.perf_counter()
        yield
        # Added, not set: a row is measured in several rounds (see run_rounds).
        row.seconds += time.perf_counter() - started
        row.client_cpu += time.process_time() - client_cpu
        row.commands += self.commands() - commands
        row.redis_cpu += self.redis_cpu() - redis_cpu
        row.worker_cpu += sum(cpu_seconds(pid) for pid in pids) - worker_cpu

    def redis_cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.topology.redis_pids)

    def commands(self) -> int:
        return sum(command_count(admin) for admin in self.admins)

    def run(self, row: Row, calls: int | None = None) -> Row:
        """Run ``row.callers`` callers for the duration (or ``calls`` calls each)."""
        payload = PAYLOADS[row.payload]
        latencies: list[list[float]] = [[] for _ in range(row.callers)]

        def keep_going(done: int) -> bool:
            return done < calls if calls is not None else time.perf_counter() < self._stop_at

        if row.system == "async":
            asyncio.run(self._async_callers(row, payload, latencies, keep_going))
        else:
            callers = self._sync_callers(row, payload, latencies, keep_going)
            with self.measuring(row):
                threads = [threading.Thread(target=caller) for caller in callers]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
        row.latencies += [latency for per_caller in latencies for latency in per_caller]
        row.calls = len(row.latencies)
        return row

    def run_rounds(self, rows: list[Row], rounds: int, calls: int | None = None) -> list[Row]:
        """Measure rows that are compared with each other in alternating rounds.

        On a shared machine the load drifts; rows measured one after another see
        different loads, rows measured in turns see the same, so their ratio holds.
        """
        for _ in range(rounds):
            for row in rows:
                self.run(row, calls=None if calls is None else max(calls // rounds, 1))
        return rows

    def _sync_callers(
        self,
        row: Row,
        payload: str,
        latencies: list[list[float]],
        keep_going: Callable[[int], bool],
    ) -> list[Callable[[], None]]:
        if row.system == "floor":
            connections = self._floor_connections.get(row.callers)
            if connections is None:
                connections = [
                    redis.Redis.from_url(self.floor_url, socket_timeout=None)
                    for _ in range(row.callers)
                ]
                for connection in connections:
                    connection.ping()
                self._floor_connections[row.callers] = connections

            def floor_caller(n: int) -> None:
                while keep_going(len(latencies[n])):
                    started = time.perf_counter()
                    self.floor_call(row.workers, payload, connections[n])
                    latencies[n].append(time.perf_counter() - started)

            return [lambda n=n: floor_caller(n) for n in range(row.callers)]
        client = self._client(row)
        echo = client.proxy(row.service, queue=row.queue).echo

        def rpc_caller(n: int) -> None:
            while keep_going(len(latencies[n])):
                started = time.perf_counter()
                assert echo(payload) == payload
                latencies[n].append(time.perf_counter() - started)

        return [lambda n=n: rpc_caller(n) for n in range(row.callers)]

    async def _async_callers(
        self,
        row: Row,
        payload: str,
        latencies: list[list[float]],
        keep_going: Callable[[int], bool],
    ) -> None:
        async with AsyncClient(self.url, timeout=30) as client:
            echo = client.proxy(row.service, queue=row.queue).echo

            async def caller(n: int) -> None:
                while keep_going(len(latencies[n])):
                    started = time.perf_counter()
                    assert await echo(payload) == payload
                    latencies[n].append(time.perf_counter() - started)

            await asyncio.gather(*(echo("warm") for _ in range(row.callers)))  # connected
            with self.measuring(row):
                await asyncio.gather(*(caller(n) for n in range(row.callers)))

    def _client(self, row: Row) -> Client:
        """One sync Client per number of callers, its connections made before it is used."""
        client = self._clients.get(row.callers)
        if client is None:
            client = Client(self.url, timeout=30, max_connections=max(row.callers, 1))
            echo = client.proxy(row.service, queue=row.queue).echo
            warming = [threading.Thread(target=echo, args=("warm",)) for _ in range(row.callers)]
            for thread in warming:
                thread.start()
            for thread in warming:
                thread.join()
            self._clients[row.callers] = client
        return client

    # -- the other measurements ------------------------------------------------------

    def concurrent_versus_sequential(self, calls: int, handler: str) -> tuple[float, float]:
        """Seconds for ``calls`` async calls gathered at once, and made one by one."""
        served = Row("", "", 0, 1, "", handler)

        async def measure() -> tuple[float, float]:
            async with AsyncClient(self.url, timeout=60) as client:
                proxy = client.proxy(served.service, queue=served.queue)
                started = time.perf_counter()
                await asyncio.gather(*(proxy.echo("x") for _ in range(calls)))
                together = time.perf_counter() - started
                started = time.perf_counter()
                for _ in range(calls):
                    await proxy.echo("x")
                return together, time.perf_counter() - started

        return asyncio.run(measure())

    def soak(self, calls: int) -> tuple[float, float]:
        """Worker RSS (MB) before and after ``calls`` calls."""
        pid = self.rpc_workers["rpc:bench:1"][0].pid
        before = rss_mb(pid)

        async def hammer() -> None:
            async with AsyncClient(self.url, timeout=60) as client:
                proxy = client.proxy("bench", queue="rpc:bench:1")
                per_caller = calls // 32

                async def caller() -> None:
                    for _ in range(per_caller):
                        await proxy.echo("soak")

                await asyncio.gather(*(caller() for _ in range(32)))

        asyncio.run(hammer())
        return before, rss_mb(pid)

    def keys_left(self) -> int:
        return sum(int(admin.dbsize()) for admin in self.admins)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        for connections in self._floor_connections.values():
            for connection in connections:
                connection.close()
        for admin in self.admins:
            admin.close()


def table(rows: list[Row], floors: dict[tuple[str, int, int, str], Row]) -> str:
    header = (
        f"{'kind':<10} {'system':<6} {'handler':<14} {'callers':>7} {'workers':>7} {'payload':>7} "
        f"{'calls':>7} {'calls/s':>9} {'median µs':>10} {'p99 µs':>9} {'ratio':>6} "
        f"{'cpu µs/call: worker':>19} {'client':>7} {'redis':>6} {'cmds/call':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        base = floors.get((row.kind, row.callers, row.workers, row.payload))
        if base is None or row.system == "floor":
            ratio = 1.0
        elif row.kind == "latency":
            ratio = row.median_us / base.median_us
        else:
            ratio = row.throughput / base.throughput
        handler = "-" if row.system == "floor" else row.handler
        handler += f", {row.serving}" if row.serving else ""
        lines.append(
            f"{row.kind:<10} {row.system:<6} {handler:<14} {row.callers:>7} {row.workers:>7} "
            f"{row.payload:>7} {row.calls:>7} {row.throughput:>9.0f} {row.median_us:>10.0f} "
            f"{row.p99_us:>9.0f} {ratio:>6.2f} {row.per_call(row.worker_cpu):>19.0f} "
            f"{row.per_call(row.client_cpu):>7.0f} {row.per_call(row.redis_cpu):>6.0f} "
            f"{row.commands / row.calls if row.calls else 0:>9.1f}"
        )
    return "\n".join(lines)


def floors_of(rows: list[Row]) -> dict[tuple[str, int, int, str], Row]:
    return {(r.kind, r.callers, r.workers, r.payload): r for r in rows if r.system == "floor"}


def topology_rows(
    make: Callable[[], AbstractContextManager[Topology]], duration: float, calls: int
) -> tuple[str, str, list[Row], list[int]]:
    """The floor, the sync and the async client on another topology, in one run: one by
    one, and 8 callers against one worker. Its note, its table, its rows, exit codes."""
    with make() as topology:
        bench = Bench(topology, duration)
        try:
            # As many receivers as callers: each one's connection costs a handshake here.
            bench.start_workers(counts=(1,), every_way=False, concurrency=8)
            systems = ("floor", "sync", "async")
            rows = bench.run_rounds(
                [Row("latency", system, 1, 1, "100 B") for system in systems], ROUNDS, calls
            )
            rows += bench.run_rounds(
                [Row("throughput", system, 8, 1, "100 B") for system in systems], ROUNDS
            )
        finally:
            codes = bench.stop_workers()
            bench.close()
    return topology.note, table(rows, floors_of(rows)), rows, codes


def machine(server: EmbeddedRedis) -> str:
    with redis.Redis.from_url(server.url) as connection:
        redis_version = connection.info("server")["redis_version"]
    return (
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"Redis {redis_version}, redis-py {redis.__version__}, rpc-redis "
        f"{getattr(rpc_redis, '__version__', '0.1.0')}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny configuration")
    parser.add_argument("--duration", type=float, help="seconds per throughput row")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    quick = args.quick
    duration = args.duration or (0.3 if quick else 3.0)
    sequential_calls = {"100 B": 100 if quick else 3000, "100 KB": 20 if quick else 300}
    caller_counts = (1, 8) if quick else (1, 8, 64)
    soak_calls = 2_000 if quick else 200_000
    concurrent_calls = 200 if quick else 1000

    rows: list[Row] = []
    with EmbeddedRedis() as server:
        bench = Bench(topologies.node(server), duration / ROUNDS)
        print(f"machine: {machine(server)}")
        print(
            "note: shared, noisy machines; compare the ratios (measured in the same run), "
            "not the absolute numbers."
        )
        try:
            bench.start_workers()
            for payload, calls in sequential_calls.items():
                group = [Row("latency", "floor", 1, 1, payload)]
                group += [
                    Row("latency", system, 1, 1, payload, handler)
                    for system in ("sync", "async")
                    for handler in ("def", "async def")
                ]
                group += [
                    Row("latency", "sync", 1, 1, payload, "def", serving) for serving in SERVING
                ]
                rows += bench.run_rounds(group, ROUNDS, calls=calls)
            for workers in (1, 2):
                for callers in caller_counts:
                    group = [
                        Row("throughput", system, callers, workers, "100 B")
                        for system in ("floor", "sync", "async")
                    ]
                    if workers == 1 and callers == 8:
                        group += [
                            Row("throughput", "sync", 8, 1, "100 B", "def", serving)
                            for serving in SERVING
                        ]
                    rows += bench.run_rounds(group, ROUNDS)
            group = [
                Row("throughput", system, 8, 1, "100 KB") for system in ("floor", "sync", "async")
            ]
            rows += bench.run_rounds(group, ROUNDS)
            bursts = {
                handler: bench.concurrent_versus_sequential(concurrent_calls, handler)
                for handler in ("def", "async def")
            }
            rss_before, rss_after = bench.soak(soak_calls)
        finally:
            exit_codes = bench.stop_workers()
        keys_left = bench.keys_left()
        bench.close()
    elsewhere = {
        name: topology_rows(make, duration / ROUNDS, sequential_calls["100 B"])
        for name, make in (("tls", topologies.tls), ("cluster", topologies.cluster))
    }
    # Events and streams, each path beside its own floor, on a Redis of their own.
    with EmbeddedRedis() as events_server:
        event_rows, event_targets, event_met, event_codes = events.measure(events_server.url, quick)
    floors = floors_of(rows)
    print()
    print(table(rows, floors))
    print()
    for name, (note, topology_table, _, _) in elsewhere.items():
        print(f"topology: {name} ({note})")
        print(topology_table)
        print()

    def ratio(
        system: str, kind: str, callers: int, workers: int, payload: str, handler: str = "def"
    ) -> float:
        [row] = [
            r
            for r in rows
            if (r.system, r.kind, r.callers, r.workers, r.payload, r.handler, r.serving)
            == (system, kind, callers, workers, payload, handler, "")
        ]
        base = floors[(kind, callers, workers, payload)]
        if kind == "latency":
            return row.median_us / base.median_us
        return row.throughput / base.throughput

    latency_ratio = ratio("sync", "latency", 1, 1, "100 B")
    async_handler_ratio = ratio("sync", "latency", 1, 1, "100 B", "async def")
    throughput_ratio = ratio("sync", "throughput", 8, 1, "100 B")
    speedups = {
        handler: one_by_one / together for handler, (together, one_by_one) in bursts.items()
    }
    growth = rss_after - rss_before
    rss = f"{growth:+.1f} MB ({rss_before:.1f} -> {rss_after:.1f})"

    def timing(handler: str) -> str:
        together, one_by_one = bursts[handler]
        return f"{speedups[handler]:.1f}x ({one_by_one:.2f}s / {together:.2f}s)"

    burst = f"{concurrent_calls} async calls: one by one / gathered"
    targets = [
        ("sync median latency / floor (100 B, def)", f"{latency_ratio:.2f}", "<= 1.25"),
        ("the same, async def handler (a goal of ours)", f"{async_handler_ratio:.2f}", "<= 1.25"),
        ("sync throughput / floor, 8 callers, 1 worker", f"{throughput_ratio:.2f}", ">= 0.80"),
        (f"worker RSS growth over {soak_calls:,} calls", rss, "< 5 MB"),
        ("keys left in Redis", str(keys_left), "0"),
        (f"{burst} (def handler)", timing("def"), ">= 3x"),
        (f"{burst} (async def handler)", timing("async def"), ">= 3x"),
    ]
    met = [
        latency_ratio <= 1.25,
        async_handler_ratio <= 1.25,
        throughput_ratio >= 0.8,
        growth < 5,
        keys_left == 0,
        speedups["def"] >= 3,
        speedups["async def"] >= 3,
    ]
    [plain, validated] = [
        r
        for serving in ("", "validated")
        for r in rows
        if (r.system, r.kind, r.payload, r.handler, r.serving)
        == ("sync", "latency", "100 B", "def", serving)
    ]
    print(
        "validation (def, validated against def, 100 B, sequential calls): "
        f"{validated.per_call(validated.worker_cpu) - plain.per_call(plain.worker_cpu):+.0f} µs "
        f"worker CPU per call, {validated.median_us - plain.median_us:+.0f} µs median latency"
    )
    print(dispatch.report(2_000 if quick else 20_000))
    print()
    print("events and streams (each path beside its floor, in alternating rounds):")
    print(events.table(event_rows))
    print()
    targets += event_targets
    met += event_met
    print("targets (ratios from this run):")
    for (name, value, goal), ok in zip(targets, met, strict=True):
        print(f"  {'MET ' if ok else 'MISS'}  {name}: {value} (target {goal})")
    print(f"workers' exit codes: {exit_codes}")
    topology_codes = [code for _, _, _, codes in elsewhere.values() for code in codes]
    print(f"workers' exit codes on the other topologies: {topology_codes}")
    print(f"exit codes of the events' floors and worker: {event_codes}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = [
            {**asdict(row), "latencies": None, "median_us": row.median_us, "p99_us": row.p99_us,
             "topology": topology}
            for topology, measured in [("node", rows)] + [
                (name, found) for name, (_, _, found, _) in elsewhere.items()
            ]
            for row in measured
        ]  # fmt: skip
        payload += [
            {**asdict(row), "latencies": None, "rounds": None, "median_us": row.median_us,
             "p99_us": row.p99_us, "topology": "node, events"}
            for row in event_rows
        ]  # fmt: skip
        results = {"rows": payload, "targets": targets, "met": met}
        args.json.write_text(json.dumps(results, indent=2))
    codes = exit_codes + topology_codes + event_codes
    return 0 if all(code == 0 for code in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
