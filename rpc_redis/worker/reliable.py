"""Crash recovery for reliable services: heartbeats, in-progress lists, requeueing.

A reliable worker moves each request atomically (BLMOVE) from the queue into its own
in-progress list, and removes it in the same transaction that writes the reply. It
keeps a heartbeat key alive and a registry entry naming its in-progress lists. Any
reliable worker that finds a registered worker's heartbeat gone runs one Lua script
per list: requests whose deadline has not passed go back to the head of their queue,
expired ones are dropped, and one delivered too often goes to the dead-letter list.
The script is atomic, so each request is recovered once, whoever runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio

from .. import protocol
from ..connection import REDIS_ERRORS
from ..printable import printable

logger = logging.getLogger("rpc_redis.reliable")

# A heartbeat lives this many intervals: two missed beats are not yet a death.
HEARTBEAT_LIVES = 3
# How long the count of a request's deliveries is remembered.
DELIVERIES_TTL_MS = 24 * 3600 * 1000

RECOVER_SCRIPT = (resources.files(__package__) / "lua" / "recover.lua").read_text()


@dataclass(frozen=True, slots=True)
class Recovered:
    requeued: int
    expired: int
    dead_lettered: int

    @property
    def total(self) -> int:
        return self.requeued + self.expired + self.dead_lettered


class Reliability:
    """One worker's side of crash recovery: its heartbeat, and recovering dead peers."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        worker_id: str,
        queues: dict[str, str],
        *,
        prefix: str,
        heartbeat_interval: float,
        max_deliveries: int,
        dead_letter_limit: int,
    ) -> None:
        self.client = client
        self.worker_id = worker_id
        self.queues = queues  # queue key -> service name
        self.prefix = prefix
        self.heartbeat_interval = heartbeat_interval
        self.max_deliveries = max_deliveries
        self.dead_letter_limit = dead_letter_limit
        self._recover = client.register_script(RECOVER_SCRIPT)
        self._registration = protocol.dumps(
            {
                "queues": self.queues,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": round(time.time(), 3),
            }
        )

    def is_reliable(self, queue: str) -> bool:
        return queue in self.queues

    def in_progress_key(self, queue: str) -> str:
        return protocol.in_progress_key(self.worker_id, queue, self.prefix)

    async def beat(self) -> None:
        """Renew the heartbeat, and the registry entry (which a Redis restart loses)."""
        ttl_ms = int(self.heartbeat_interval * HEARTBEAT_LIVES * 1000)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(protocol.heartbeat_key(self.worker_id, self.prefix), b"1", px=ttl_ms)
            pipe.hset(protocol.worker_registry_key(self.prefix), self.worker_id, self._registration)
            await pipe.execute()

    async def keep_up(self, command_timeout: float, stop: asyncio.Event) -> None:
        """Beat the heartbeat and look for dead workers, every heartbeat interval, until
        ``stop`` is set; an outage is only waited out (the receivers log it).

        Stopped by the event, not by cancelling: a cancel that lands as a beat completes
        can be lost inside ``asyncio.wait_for`` (Python before 3.12), and the worker
        would wait for ever for a task that goes on beating.
        """
        while not stop.is_set():
            try:
                await asyncio.wait_for(self.beat(), command_timeout)
                await asyncio.wait_for(self.recover_dead_workers(), command_timeout)
            except (*REDIS_ERRORS, asyncio.TimeoutError):
                pass
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.heartbeat_interval)

    async def recover_dead_workers(self) -> None:
        """Requeue the in-progress requests of every registered worker whose heartbeat is gone."""
        registry = await self.client.hgetall(protocol.worker_registry_key(self.prefix))
        for raw_id, raw_entry in registry.items():
            worker_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            if worker_id == self.worker_id:
                continue
            try:
                queues: dict[str, str] = protocol.loads(raw_entry)["queues"]
            except (ValueError, KeyError, TypeError):
                queues = {}
            await self.recover(worker_id, queues)

    async def recover(self, worker_id: str, queues: dict[str, str]) -> None:
        """Recover one worker's lists, if its heartbeat is gone; then forget the worker."""
        heartbeat = protocol.heartbeat_key(worker_id, self.prefix)
        for queue, service in queues.items():
            counts: Any = await self._recover(
                keys=[
                    heartbeat,
                    protocol.in_progress_key(worker_id, queue, self.prefix),
                    queue,
                    protocol.dead_letter_key(service, self.prefix),
                    protocol.deliveries_key(service, self.prefix),
                ],
                args=[
                    repr(time.time()),
                    self.max_deliveries,
                    self.dead_letter_limit,
                    DELIVERIES_TTL_MS,
                    queue,
                ],
            )
            if counts[0] == -1:
                return  # alive after all
            recovered = Recovered(*counts)
            if recovered.total:
                logger.warning(
                    "recovered %d request(s) of dead worker %s from %s: %d requeued, "
                    "%d expired, %d dead-lettered",
                    recovered.total,
                    printable(worker_id),  # from the registry, as the queue: not ours
                    printable(queue),
                    recovered.requeued,
                    recovered.expired,
                    recovered.dead_lettered,
                )
        await self.client.hdel(protocol.worker_registry_key(self.prefix), worker_id)

    async def retire(self) -> None:
        """On a clean exit: stop the heartbeat and requeue anything left in progress."""
        await self.client.delete(protocol.heartbeat_key(self.worker_id, self.prefix))
        await self.recover(self.worker_id, self.queues)
