"""A bounded fuzz run: hostile messages pushed onto a served queue while real calls run.

    python -m bench.fuzz --messages 10000

One ``rpc-worker services.calculator`` process serves an embedded Redis on loopback,
with its default limits (only ``--reply-ttl`` and ``--dead-letter-limit`` are raised,
so that the run can see every outcome at the end). Keys of other applications are made
first (lists, a Celery queue, another deployment's queue, a string, a hash, a set, a
sorted set, a stream). Then the run pushes hostile messages (``bench/hostile.py``:
random bytes, invalid UTF-8, deep nesting, huge strings and batches, wrong envelope
types, reply keys naming queues, foreign keys and the library's own, control
characters, reply and sleep bombs) while client threads make real calls, and prints:

- real calls right / wrong (must be 0) / failed;
- replies written, dead letters;
- messages with a usable reply key that got neither (must be 0), and messages that
  ended in anything else they may not (must be 0);
- foreign keys changed (must be 0);
- log lines per message, the longest, and any not on one printable line (must be 0);
- whether the worker is alive and answering, its RSS before, at its peak and after;
- keys left without an expiry, beyond the documented ones (must be none).

Exits 1 if a rule is broken. Everything runs on 127.0.0.1, bounded in count and time.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import random
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import redis

from rpc_redis import Client, RpcError, RpcRedisError
from rpc_redis.embedded import EmbeddedRedis
from rpc_redis.testing import WorkerProcess

from .hostile import (
    ANSWERED,
    DEAD,
    DEAD_LETTER,
    FOREIGN,
    NOTHING,
    QUEUE,
    REPLY,
    Hostile,
    Limits,
    changed,
    hostile_message,
    make_foreign_keys,
    snapshot,
)

REPOSITORY = Path(__file__).resolve().parent.parent
T = TypeVar("T")
# Keys a run may leave without an expiry: the documented structures (reliability.md).
DOCUMENTED = ("rpc:queue:", "rpc:dead:", "rpc:workers", "rpc:inprogress:")
BACKLOG = 300  # messages waiting on the queue before the pusher waits for the worker
SETTLE_SECONDS = 30.0  # after the last push, how long outcomes may take to show


class RandomSource:
    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self.random.randint(low, high)

    def pick(self, options: Sequence[T]) -> T:
        return options[self.random.randrange(len(options))]

    def data(self, size: int) -> bytes:
        return self.random.randbytes(size)


class Pushed:
    """What a run remembers of a message: not its bytes (some are megabytes)."""

    __slots__ = ("digest", "ends", "kind", "reply_key")

    def __init__(self, message: Hostile) -> None:
        self.kind = message.kind
        self.ends = message.ends
        self.reply_key = message.reply_key
        self.digest = hashlib.sha1(message.raw).digest()


class Calls:
    """The real calls' tally, from the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()

    def caller(self, url: str, stop: threading.Event, seed: int) -> None:
        chance = random.Random(seed)
        with Client(url, timeout=10) as client:
            calc = client.proxy("calculator")
            while not stop.is_set():
                a, b = chance.randint(-1000, 1000), chance.randint(-1000, 1000)
                try:
                    outcome = "right" if calc.add(a, b) == a + b else "wrong"
                except (RpcError, RpcRedisError) as exc:
                    outcome = f"failed ({type(exc).__name__})"
                with self.lock:
                    self.counts[outcome] += 1


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def start_worker(url: str, reliable: bool) -> WorkerProcess:
    args = ["services.calculator", "--redis-url", url, "--reply-ttl", "3600"]
    args += ["--dead-letter-limit", "1000000", *(["--reliable"] if reliable else [])]
    return WorkerProcess(args, cwd=REPOSITORY).start()


def push_all(
    connection: redis.Redis, count: int, seconds: float, seed: int, limits: Limits
) -> tuple[list[Pushed], float]:
    """Push up to ``count`` hostile messages within ``seconds``, never more than BACKLOG
    ahead of the worker; the messages as remembered, and the largest one's size."""
    source = RandomSource(seed)
    pushed: list[Pushed] = []
    largest = 0
    started = time.monotonic()
    while len(pushed) < count and time.monotonic() - started < seconds:
        while connection.llen(QUEUE) > BACKLOG and time.monotonic() - started < seconds:
            time.sleep(0.005)
        with connection.pipeline(transaction=False) as pipe:
            for _ in range(min(50, count - len(pushed))):
                message = hostile_message(source, len(pushed), limits)
                pipe.rpush(QUEUE, message.raw)
                pushed.append(Pushed(message))
                largest = max(largest, len(message.raw))
            pipe.execute()
    return pushed, largest


def outcomes(connection: redis.Redis, pushed: list[Pushed]) -> list[str]:
    """What each message ended in, seen from Redis: its reply key, or a dead letter."""
    dead = {
        hashlib.sha1(entry["raw"]).digest()
        for entry in map(decode_entry, connection.lrange(DEAD, 0, -1))
    }
    with connection.pipeline(transaction=False) as pipe:
        for message in pushed:
            pipe.exists(message.reply_key) if message.reply_key else pipe.ping()
        exists = pipe.execute()
    ends = []
    for message, there in zip(pushed, exists, strict=True):
        if message.reply_key and there == 1:
            ends.append(REPLY)
        elif message.digest in dead:
            ends.append(DEAD_LETTER)
        else:
            ends.append(NOTHING)
    return ends


def decode_entry(entry: bytes) -> dict[str, object]:
    from rpc_redis.protocol import decode_dead_letter

    return decode_dead_letter(entry)


def settle(connection: redis.Redis, pushed: list[Pushed]) -> list[str]:
    """The outcomes, once the queue is empty and no answer is still coming (bounded)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while connection.llen(QUEUE) and time.monotonic() < deadline:
        time.sleep(0.05)
    while True:
        ends = outcomes(connection, pushed)
        missing = [m for m, end in zip(pushed, ends, strict=True) if end not in m.ends]
        if not missing or time.monotonic() > deadline:
            return ends
        time.sleep(0.5)


def keys_left(connection: redis.Redis) -> list[str]:
    return sorted(
        key.decode(errors="replace")
        for key in connection.scan_iter("*", count=1000)
        if connection.pttl(key) == -1
        and key.decode(errors="replace") not in FOREIGN
        and not key.decode(errors="replace").startswith(DOCUMENTED)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="(default 10,000)")
    parser.add_argument("--seconds", type=float, default=600, help="most time pushing")
    parser.add_argument("--callers", type=int, default=2, help="client threads making calls")
    parser.add_argument("--reliable", action="store_true", help="serve in reliable mode")
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args(argv)
    limits = Limits()
    with EmbeddedRedis() as server, redis.Redis.from_url(server.url) as connection:
        make_foreign_keys(connection)
        before = snapshot(connection)
        worker = start_worker(server.url, args.reliable)
        try:
            calls = Calls()
            with Client(server.url, timeout=10) as warm:
                for n in range(500):
                    warm.proxy("calculator").add(n, n)
            rss_before = rss_kib(worker.pid)
            stop = threading.Event()
            callers = [
                threading.Thread(target=calls.caller, args=(server.url, stop, args.seed + n))
                for n in range(args.callers)
            ]
            for caller in callers:
                caller.start()
            started = time.monotonic()
            try:
                pushed, largest = push_all(
                    connection, args.messages, args.seconds, args.seed, limits
                )
                ends = settle(connection, pushed)
            finally:
                stop.set()
                for caller in callers:
                    caller.join(30)
            took = time.monotonic() - started
            with Client(server.url, timeout=5) as client:
                alive = worker.process is not None and worker.process.poll() is None
                answering = alive and client.proxy("calculator").add(20, 22) == 42
            rss_after, rss_peak = rss_kib(worker.pid), rss_kib(worker.pid, "VmHWM")
        finally:
            exit_code = worker.stop()
        foreign_changed = changed(before, connection)
        left = keys_left(connection)
        dead_letters = connection.llen(DEAD)
    report(args, pushed, ends, calls, worker, took, largest)
    lines = worker.lines
    unprintable = [line for line in lines if not line.isprintable()]
    print(f"foreign keys changed: {len(foreign_changed)} {foreign_changed or ''}".rstrip())
    print(f"dead letters: {dead_letters}")
    print(
        f"log lines: {len(lines)} for {len(pushed)} messages ({len(lines) / len(pushed):.2f} "
        f"per message), the longest {max(map(len, lines))} characters, "
        f"{len(unprintable)} not on one printable line"
    )
    print(f"worker alive and answering: {'yes' if answering else 'NO'}, exit code {exit_code}")
    print(
        f"worker RSS: {rss_before / 1024:.0f} MB before, {rss_peak / 1024:.0f} MB at its peak, "
        f"{rss_after / 1024:.0f} MB after"
    )
    print(f"keys left without expiry (undocumented): {left or 'none'}")
    broken = broken_rules(pushed, ends, calls) or foreign_changed or unprintable or left
    return 1 if broken or not answering or exit_code else 0


def report(
    args: argparse.Namespace,
    pushed: list[Pushed],
    ends: list[str],
    calls: Calls,
    worker: WorkerProcess,
    took: float,
    largest: int,
) -> None:
    kinds = collections.Counter(message.kind for message in pushed)
    mode = "reliable" if args.reliable else "default"
    print(f"fuzz run: {len(pushed)} hostile messages in {took:.0f}s, seed {args.seed}, {mode} mode")
    print("kinds: " + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())))
    print(f"largest message: {largest:,} bytes")
    counts = calls.counts
    failed = {kind: n for kind, n in counts.items() if kind.startswith("failed")}
    print(
        f"real calls: {counts['right']} right, {counts['wrong']} wrong, "
        f"{sum(failed.values())} failed {failed or ''}".rstrip()
    )
    ended = collections.Counter(ends)
    print(
        f"replies written: {ended[REPLY]}, dead-lettered: {ended[DEAD_LETTER]}, "
        f"nothing: {ended[NOTHING]}"
    )
    ended_as = list(zip(pushed, ends, strict=True))
    neither = [m for m, end in ended_as if end == NOTHING and m.ends <= ANSWERED]
    wrong_end = [m for m, end in ended_as if end not in m.ends]
    print(
        "messages with a usable reply key that got neither a reply nor a dead letter: "
        f"{len(neither)}"
    )
    print(f"messages that ended otherwise than they may: {len(wrong_end)}")
    for message in wrong_end[:5]:
        print(
            f"  {message.kind}: may end in {sorted(message.ends)}, reply key {message.reply_key!r}"
        )


def broken_rules(pushed: list[Pushed], ends: list[str], calls: Calls) -> bool:
    wrong_end = any(end not in m.ends for m, end in zip(pushed, ends, strict=True))
    return wrong_end or calls.counts["wrong"] > 0 or calls.counts["right"] == 0


if __name__ == "__main__":
    sys.exit(main())
