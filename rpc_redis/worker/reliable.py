"""Crash recovery for reliable services: heartbeats, in-progress lists, requeueing.

A reliable worker moves each request atomically (BLMOVE) from the queue into its own
in-progress list, and removes it in the same transaction that writes the reply. Like
every worker it keeps a heartbeat and a registry entry (``registry.py``), which names
the queues it takes requests from reliably. Any reliable worker that finds a
registered worker's heartbeat gone runs one Lua script per such queue: requests whose
deadline has not passed go back to the head of their queue, expired ones are dropped,
and one delivered too often goes to the dead-letter list. The script is atomic, so
each request is recovered once, whoever runs it; then the dead worker's entry goes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio

from .. import protocol
from ..printable import printable
from .registry import entry_reliable_queues, parse_entry

logger = logging.getLogger("rpc_redis.reliable")

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
    """One worker's side of crash recovery: its in-progress lists, and recovering dead peers."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        worker_id: str,
        queues: dict[str, str],
        *,
        prefix: str,
        max_deliveries: int,
        dead_letter_limit: int,
    ) -> None:
        self.client = client
        self.worker_id = worker_id
        self.queues = queues  # queue key -> service name
        self.prefix = prefix
        self.max_deliveries = max_deliveries
        self.dead_letter_limit = dead_letter_limit
        self._recover = client.register_script(RECOVER_SCRIPT)

    def is_reliable(self, queue: str) -> bool:
        return queue in self.queues

    def in_progress_key(self, queue: str) -> str:
        return protocol.in_progress_key(self.worker_id, queue, self.prefix)

    async def recover_dead_workers(self) -> None:
        """Requeue the in-progress requests of every registered worker whose heartbeat is gone."""
        registry = await self.client.hgetall(protocol.worker_registry_key(self.prefix))
        for raw_id, raw_entry in registry.items():
            worker_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            if worker_id == self.worker_id:
                continue
            queues = entry_reliable_queues(parse_entry(raw_entry))
            if queues:
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
                    protocol.deliveries_key(queue, self.prefix),
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
        """On a clean exit, once the heartbeat is gone: requeue anything left in progress."""
        await self.recover(self.worker_id, self.queues)
