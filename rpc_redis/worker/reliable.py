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

import redis.exceptions

from .. import protocol
from ..connection import REDIS_ERRORS, AsyncRoutes
from .receiving import Command, raise_first_error

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
    """One worker's side of crash recovery: its heartbeats, and recovering dead peers.

    Every command names keys of one hash slot, so the same steps run on a cluster: a
    heartbeat per reliable queue, in the queue's slot, read by the recovery script beside
    the lists it recovers; the registry, in a slot of its own, written after them.
    """

    def __init__(
        self,
        routes: AsyncRoutes,
        worker_id: str,
        queues: dict[str, str],
        *,
        prefix: str,
        heartbeat_interval: float,
        max_deliveries: int,
        dead_letter_limit: int,
        command_timeout: float = 10.0,
    ) -> None:
        self.routes = routes
        self.worker_id = worker_id
        self.queues = queues  # queue key -> service name
        self.prefix = prefix
        self.heartbeat_interval = heartbeat_interval
        self.max_deliveries = max_deliveries
        self.dead_letter_limit = dead_letter_limit
        self.command_timeout = command_timeout
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

    async def _run(self, commands: list[Command]) -> list[Any]:
        """The commands' results, each on its key's node; the first error reply raised."""
        results = await self.routes.exchange(commands, self.command_timeout)
        raise_first_error(results)
        return results

    async def beat(self) -> None:
        """Renew the heartbeats, then the registry entry (which a Redis restart loses):
        in that order, so that a peer never finds the entry without a heartbeat."""
        ttl_ms = int(self.heartbeat_interval * HEARTBEAT_LIVES * 1000)
        await self._run(
            [
                ("SET", protocol.heartbeat_key(self.worker_id, queue, self.prefix), b"1",
                 "PX", ttl_ms)
                for queue in self.queues
            ]
        )  # fmt: skip
        registry = protocol.worker_registry_key(self.prefix)
        await self._run([("HSET", registry, self.worker_id, self._registration)])

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
            except (*REDIS_ERRORS, redis.exceptions.ResponseError, asyncio.TimeoutError):
                pass
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.heartbeat_interval)

    async def recover_dead_workers(self) -> None:
        """Requeue the in-progress requests of every registered worker whose heartbeat is gone."""
        [flat] = await self._run([("HGETALL", protocol.worker_registry_key(self.prefix))])
        registry = dict(zip(flat[::2], flat[1::2], strict=True)) if isinstance(flat, list) else flat
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
        """Recover one worker's lists, if its heartbeats are gone; then forget the worker."""
        for queue, service in queues.items():
            dead_letters = protocol.dead_letter_key(service, self.prefix)
            keys = [
                protocol.heartbeat_key(worker_id, queue, self.prefix),
                protocol.in_progress_key(worker_id, queue, self.prefix),
                queue,
                protocol.deliveries_key(queue, self.prefix),
            ]
            if self.routes.share_slot(queue, dead_letters):
                keys.append(dead_letters)  # else the script returns the entries
            arguments = [
                repr(time.time()), self.max_deliveries, self.dead_letter_limit,
                DELIVERIES_TTL_MS, queue,
            ]  # fmt: skip
            [counts] = await self._run([("EVAL", RECOVER_SCRIPT, len(keys), *keys, *arguments)])
            if counts[0] == -1:
                return  # alive after all
            recovered = Recovered(*counts[:3])
            if len(counts) > 3:  # the dead letters of a queue in another slot than its list
                await self._run(
                    [("RPUSH", dead_letters, *counts[3:]),
                     ("LTRIM", dead_letters, -self.dead_letter_limit, -1)]
                )  # fmt: skip
            if recovered.total:
                logger.warning(
                    "recovered %d request(s) of dead worker %s from %s: %d requeued, "
                    "%d expired, %d dead-lettered",
                    recovered.total,
                    worker_id,
                    queue,
                    recovered.requeued,
                    recovered.expired,
                    recovered.dead_lettered,
                )
        await self._run([("HDEL", protocol.worker_registry_key(self.prefix), worker_id)])

    async def retire(self) -> None:
        """On a clean exit: stop the heartbeats and requeue anything left in progress."""
        await self._run(
            [("DEL", protocol.heartbeat_key(self.worker_id, queue, self.prefix))
             for queue in self.queues]
        )  # fmt: skip
        await self.recover(self.worker_id, self.queues)
