"""The registry of every worker, plain or reliable: who serves what, where, how busy.

While it runs, each worker keeps two things in Redis, renewed at every heartbeat:

- ``<prefix>:worker:<id>``, its heartbeat: a key that expires ``HEARTBEAT_LIVES``
  intervals after the last beat, so a worker killed outright is known dead within
  three intervals;
- its entry in the hash ``<prefix>:workers`` (id -> JSON: host, pid, start, queues,
  concurrency, requests in flight, calls served and their recent rate, last beat).

A clean stop removes both. A crashed worker's entry stays, with no heartbeat, until a
live worker prunes it (every few beats); the entry of a crashed *reliable* worker is
left to the reliable workers, which remove it once they have recovered its requests
(``reliable.py``). So the hash holds the live workers and the recently dead, no more.
Every command names one key (no transaction spans the two): on a Redis Cluster they
live in different slots, and each is sent to its own node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import redis.exceptions

from .. import protocol
from ..connection import REDIS_ERRORS, AsyncRoutes
from .receiving import Command, raise_first_error

logger = logging.getLogger("rpc_redis.worker")

# A heartbeat lives this many intervals: two missed beats are not yet a death.
HEARTBEAT_LIVES = 3
# Beats between two looks for entries whose worker died.
PRUNE_EVERY = 10
# The recent call rate is measured over this many seconds.
RATE_WINDOW = 60.0

Upkeep = Callable[[], Awaitable[None]]


class CallRate:
    """Calls served per second over the last ``window`` seconds, per queue, from the
    running totals seen at each beat."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, dict[str, int]]] = deque()

    def observe(self, now: float, served: Mapping[str, int]) -> dict[str, float]:
        self._samples.append((now, dict(served)))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        then, before = self._samples[0]
        elapsed = now - then
        if elapsed <= 0:
            return {queue: 0.0 for queue in served}
        return {
            queue: round((count - before.get(queue, 0)) / elapsed, 3)
            for queue, count in served.items()
        }


class Presence:
    """One worker's heartbeat and registry entry, and the upkeep that runs with them."""

    def __init__(
        self,
        routes: AsyncRoutes,
        worker_id: str,
        *,
        prefix: str,
        heartbeat_interval: float,
        describe: Callable[[], dict[str, Any]],
        served: Callable[[], Mapping[str, int]],
    ) -> None:
        self.routes = routes
        self.worker_id = worker_id
        self.prefix = prefix
        self.heartbeat_interval = heartbeat_interval
        self._describe = describe  # what the entry says of the worker now
        self._served = served  # calls served so far, per queue
        self._rate = CallRate()
        self._beats = 0

    @property
    def ttl_ms(self) -> int:
        return int(self.heartbeat_interval * HEARTBEAT_LIVES * 1000)

    def entry(self) -> bytes:
        """The registry entry as of now."""
        now = time.time()
        served = self._served()
        entry = {
            **self._describe(),
            "served": dict(served),
            "rate": self._rate.observe(time.monotonic(), served),
            "seen": round(now, 3),
        }
        return protocol.dumps(entry)

    async def _run(self, commands: list[Command], timeout: float = 10.0) -> list[Any]:
        """Each command on its key's node; the first error reply raised."""
        results = await self.routes.exchange(commands, timeout)
        raise_first_error(results)
        return results

    async def beat(self) -> None:
        """Renew the heartbeat and the entry (which a Redis restart would have lost)."""
        heartbeat = protocol.heartbeat_key(self.worker_id, self.prefix)
        registry = protocol.worker_registry_key(self.prefix)
        await self._run(
            [("SET", heartbeat, b"1", "PX", self.ttl_ms),
             ("HSET", registry, self.worker_id, self.entry())]
        )  # fmt: skip
        self._beats += 1

    async def keep_up(
        self, command_timeout: float, stop: asyncio.Event, upkeep: Sequence[Upkeep] = ()
    ) -> None:
        """Beat, prune now and then, and run the other ``upkeep`` (reliable recovery,
        metrics sampling), every heartbeat interval until ``stop`` is set; an outage is
        only waited out (the receivers log it).

        Stopped by the event, not by cancelling: a cancel that lands as a beat completes
        can be lost inside ``asyncio.wait_for`` (Python before 3.12), and the worker
        would wait for ever for a task that goes on beating.
        """
        while not stop.is_set():
            try:
                await asyncio.wait_for(self.beat(), command_timeout)
                if self._beats % PRUNE_EVERY == 0:
                    await asyncio.wait_for(self.prune(), command_timeout)
                for step in upkeep:
                    await asyncio.wait_for(step(), command_timeout)
            except (*REDIS_ERRORS, redis.exceptions.ResponseError, asyncio.TimeoutError):
                pass
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.heartbeat_interval)

    async def prune(self) -> int:
        """Remove the entries of plain workers whose heartbeat is gone; how many."""
        registry_key = protocol.worker_registry_key(self.prefix)
        [flat] = await self._run([("HGETALL", registry_key)])
        registry = dict(zip(flat[::2], flat[1::2], strict=True)) if isinstance(flat, list) else flat
        candidates = [
            text(raw_id)
            for raw_id, raw_entry in registry.items()
            if not entry_reliable_queues(parse_entry(raw_entry))
        ]
        candidates = [worker for worker in candidates if worker != self.worker_id]
        if not candidates:
            return 0
        alive = await self._run(
            [("EXISTS", protocol.heartbeat_key(worker, self.prefix)) for worker in candidates]
        )
        dead = [worker for worker, exists in zip(candidates, alive, strict=True) if not exists]
        if dead:
            await self._run([("HDEL", registry_key, *dead)])
        return len(dead)

    async def retire(self) -> None:
        """On a clean stop: no heartbeat, no entry."""
        await self._run(
            [("DEL", protocol.heartbeat_key(self.worker_id, self.prefix)),
             ("HDEL", protocol.worker_registry_key(self.prefix), self.worker_id)]
        )  # fmt: skip


def parse_entry(raw: bytes | str) -> dict[str, Any] | None:
    """A registry entry, or None if it is not one (written by hand, or garbled)."""
    try:
        entry = protocol.loads(raw)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def entry_reliable_queues(entry: dict[str, Any] | None) -> dict[str, str]:
    """The queues (-> service) a registered worker took requests from reliably: the
    in-progress lists to recover if it dies. An entry written before every worker
    registered names only those, as its ``queues``."""
    if entry is None or not isinstance(entry.get("queues"), dict):
        return {}
    queues: dict[str, str] = entry["queues"]
    reliable = entry.get("reliable")
    if reliable is None:
        return queues
    return {queue: service for queue, service in queues.items() if queue in reliable}


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
