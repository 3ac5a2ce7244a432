"""A bounded chaos run: calls from several clients while workers are killed and Redis restarts.

    python -m bench.chaos --duration 60

Two reliable ``rpc-worker services.calculator`` processes serve an embedded Redis on
loopback. Client threads (sync) and an asyncio client call ``add`` and ``sleep``
without pause. Every few seconds one worker is killed with SIGKILL and a new one
started; once, mid-run, Redis itself is killed and restarted on the same port. At the
end it prints what happened to every call:

- answered: the right result;
- errors by kind: RpcTimeout / RpcConnectionError (clear errors, expected in an outage);
- wrong: a result that is not the right one (must be 0);
- lost: a call that neither returned nor raised within its timeout plus a grace (must
  be 0: in reliable mode every call is answered or fails with a clear error);
- keys left: keys in Redis without an expiry that are not a documented structure.

Exits 1 if anything was lost or wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis

from rpc_redis import AsyncClient, Client, RpcConnectionError, RpcTimeout
from rpc_redis.embedded import EmbeddedRedis
from rpc_redis.testing import WorkerProcess

REPOSITORY = Path(__file__).resolve().parent.parent
CALL_TIMEOUT = 3.0
GRACE = 1.0
# Structures documented as bounded and without expiry (docs/reliability.md).
DOCUMENTED_KEYS = ("rpc:queue:", "rpc:dead:", "rpc:workers", "rpc:inprogress:")


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, outcome: str) -> None:
        with self.lock:
            self.counts[outcome] += 1


def classify(call: Any, expected: Any, tally: Tally) -> None:
    started = time.monotonic()
    try:
        result = call()
    except (RpcTimeout, RpcConnectionError) as exc:
        outcome = type(exc).__name__
    except Exception as exc:  # anything else is not a clear error
        outcome = f"unexpected {type(exc).__name__}"
    else:
        outcome = "answered" if result == expected else "wrong"
    if time.monotonic() - started > CALL_TIMEOUT + GRACE:
        outcome = "lost"
    tally.add(outcome)


def sync_caller(url: str, stop: threading.Event, tally: Tally, seed: int) -> None:
    chance = random.Random(seed)
    with Client(url, timeout=CALL_TIMEOUT) as client:
        calc = client.proxy("calculator")
        while not stop.is_set():
            a, b = chance.randint(0, 1000), chance.randint(0, 1000)
            if chance.random() < 0.1:
                seconds = round(chance.uniform(0.05, 0.5), 3)
                classify(lambda seconds=seconds: calc.sleep(seconds), seconds, tally)
            else:
                classify(lambda a=a, b=b: calc.add(a, b), a + b, tally)


def async_caller(url: str, stop: threading.Event, tally: Tally) -> None:
    async def run() -> None:
        async with AsyncClient(url, timeout=CALL_TIMEOUT) as client:
            calc = client.proxy("calculator")

            async def one(n: int) -> None:
                started = time.monotonic()
                try:
                    result = await calc.mul(n, 3)
                except (RpcTimeout, RpcConnectionError) as exc:
                    outcome = type(exc).__name__
                except Exception as exc:
                    outcome = f"unexpected {type(exc).__name__}"
                else:
                    outcome = "answered" if result == n * 3 else "wrong"
                if time.monotonic() - started > CALL_TIMEOUT + GRACE:
                    outcome = "lost"
                tally.add(outcome)

            n = 0
            while not stop.is_set():
                await asyncio.gather(*(one(n + i) for i in range(20)))
                n += 20

    asyncio.run(run())


def start_worker(url: str) -> WorkerProcess:
    args = ["services.calculator", "--redis-url", url, "--reliable", "--concurrency", "8"]
    args += ["--heartbeat-interval", "0.5"]
    return WorkerProcess(args, cwd=REPOSITORY).start(ready_timeout=0)


def keys_left(url: str) -> list[str]:
    with redis.Redis.from_url(url) as connection:
        return sorted(
            key.decode()
            for key in connection.scan_iter("*")
            if connection.pttl(key) < 0 and not key.decode().startswith(DOCUMENTED_KEYS)
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--clients", type=int, default=3, help="sync client threads")
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between kills")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    chance = random.Random(args.seed)
    tally = Tally()
    kills = 0
    with EmbeddedRedis() as server:
        workers: list[WorkerProcess] = []
        try:
            for _ in range(2):
                workers.append(start_worker(server.url))
                workers[-1].wait_for_line("rpc-worker serving", timeout=15)
        except BaseException:
            for worker in workers:  # whatever a run starts, it stops
                worker.stop()
            raise
        stop = threading.Event()
        callers = [
            threading.Thread(target=sync_caller, args=(server.url, stop, tally, args.seed + n))
            for n in range(args.clients)
        ]
        callers.append(threading.Thread(target=async_caller, args=(server.url, stop, tally)))
        for caller in callers:
            caller.start()
        started = time.monotonic()
        restarted_redis = False
        try:
            while time.monotonic() - started < args.duration:
                time.sleep(args.kill_every)
                victim = workers.pop(chance.randrange(len(workers)))
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait(10)
                kills += 1
                workers.append(start_worker(server.url))
                if not restarted_redis and time.monotonic() - started > args.duration / 2:
                    server.kill()
                    server.start()
                    restarted_redis = True
        finally:
            stop.set()
            for caller in callers:
                caller.join(CALL_TIMEOUT * 3)
            hung_callers = sum(caller.is_alive() for caller in callers)
            for worker in workers:  # one started just now is let reach serving first:
                with contextlib.suppress(AssertionError):  # a SIGTERM while it imports
                    worker.wait_for_line("rpc-worker serving", timeout=15)  # kills it
            exit_codes = [worker.stop() for worker in workers]
        left = keys_left(server.url)
    counts = tally.counts
    sent = sum(counts.values())
    errors = {kind: n for kind, n in counts.items() if kind not in ("answered", "wrong", "lost")}
    lost = counts["lost"] + hung_callers
    print(f"chaos run: {args.duration:.0f}s, {args.clients + 1} clients, 2 reliable workers")
    print(f"worker kills: {kills}, Redis restarts: {int(restarted_redis)}")
    print(f"calls sent: {sent}")
    print(f"answered: {counts['answered']}")
    print(f"errors by kind: {dict(sorted(errors.items())) or 'none'}")
    print(f"wrong: {counts['wrong']}")
    print(f"lost: {lost}")
    print(f"workers' exit codes at the end: {exit_codes}")
    for worker, code in zip(workers, exit_codes, strict=True):
        if code:  # what a worker that did not stop cleanly said last
            print(f"worker {worker.pid} exited {code}; its last lines:")
            print("\n".join(f"  | {line}" for line in worker.lines[-15:]))
    print(f"keys left without expiry (undocumented): {left or 'none'}")
    unexpected = sum(n for kind, n in errors.items() if kind.startswith("unexpected"))
    failed = lost or counts["wrong"] or unexpected or left or any(exit_codes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
