"""Crash recovery for reliable services: heartbeats, in-progress lists, requeueing.

A reliable worker moves each request atomically (BLMOVE) from the queue into its own
in-progress list, and removes it in the same transaction that writes the reply. Like
every worker it keeps a heartbeat and a registry entry (``registry.py``), which names
the queues it takes requests from reliably; beside them it keeps one heartbeat per
such queue, in the queue's hash slot. Any reliable worker that finds a registered
worker's heartbeats gone runs one Lua script per such queue, which reads that queue's
heartbeat beside the lists it recovers (all in one slot: on a cluster too): requests
whose deadline has not passed go back to the head of their queue, expired ones are
dropped, and one delivered too often goes to the dead-letter list. The script is
atomic, so each request is recovered once, whoever runs it; then the dead worker's
entry goes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from .. import protocol
from ..connection import AsyncRoutes
from ..printable import printable
from . import scripts
from .receiving import Command, raise_first_error
from .registry import HEARTBEAT_LIVES, entry_reliable_queues, parse_entry

logger = logging.getLogger("rpc_redis.reliable")

# How long the count of a request's deliveries is remembered.
DELIVERIES_TTL_MS = 24 * 3600 * 1000

RECOVER_SCRIPT = scripts.load("recover")


@dataclass(frozen=True, slots=True)
class Recovered:
    requeued: int
    expired: int
    dead_lettered: int

    @property
    def total(self) -> int:
        return self.requeued + self.expired + self.dead_lettered


class Reliability:
    """One worker's side of crash recovery: its in-progress lists and their heartbeats,
    and recovering dead peers. Every command names keys of one hash slot, so the same
    steps run on a cluster."""

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
        """Renew the heartbeat of each reliable queue (before the registry entry at the
        first beat, so that a peer never finds the entry without them)."""
        ttl_ms = int(self.heartbeat_interval * HEARTBEAT_LIVES * 1000)
        await self._run(
            [
                ("SET", protocol.queue_heartbeat_key(self.worker_id, queue, self.prefix),
                 b"1", "PX", ttl_ms)
                for queue in self.queues
            ]
        )  # fmt: skip

    async def recover_dead_workers(self) -> None:
        """Requeue the in-progress requests of every registered worker whose heartbeat is gone."""
        [flat] = await self._run([("HGETALL", protocol.worker_registry_key(self.prefix))])
        registry = dict(zip(flat[::2], flat[1::2], strict=True)) if isinstance(flat, list) else flat
        for raw_id, raw_entry in registry.items():
            worker_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            if worker_id == self.worker_id:
                continue
            queues = entry_reliable_queues(parse_entry(raw_entry))
            if queues:
                await self.recover(worker_id, queues)

    async def recover(self, worker_id: str, queues: dict[str, str]) -> None:
        """Recover one worker's lists, if its heartbeats are gone; then forget the worker."""
        for queue, service in queues.items():
            dead_letters = protocol.dead_letter_key(service, self.prefix)
            keys = [
                protocol.queue_heartbeat_key(worker_id, queue, self.prefix),
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
                    printable(worker_id),  # from the registry, as the queue: not ours
                    printable(queue),
                    recovered.requeued,
                    recovered.expired,
                    recovered.dead_lettered,
                )
        await self._run([("HDEL", protocol.worker_registry_key(self.prefix), worker_id)])

    async def retire(self) -> None:
        """On a clean exit: stop the queues' heartbeats, requeue anything left in progress."""
        await self._run(
            [("DEL", protocol.queue_heartbeat_key(self.worker_id, queue, self.prefix))
             for queue in self.queues]
        )  # fmt: skip
        await self.recover(self.worker_id, self.queues)
