"""Moving one slot with its keys between two primaries, in the steps clients meet.

The same dance as ``redis-cli --cluster reshard``: IMPORTING on the target, MIGRATING on
the source, MIGRATE the keys, then SETSLOT NODE everywhere. In between, the source answers
ASK for a key already moved; afterwards, every key of the slot is a MOVED.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis

from ..embedded import EmbeddedRedis
from .nodes import connect

if TYPE_CHECKING:
    from .cluster import EmbeddedCluster

MIGRATE_TIMEOUT_MS = 5000


class SlotMigration:
    """One slot moving from ``source`` to ``target``, in the steps clients can meet.

    Between :meth:`begin` and :meth:`finish`, a key already moved is answered with ASK by
    the source; after :meth:`finish`, every key of the slot with MOVED.
    """

    def __init__(
        self, cluster: EmbeddedCluster, slot: int, source: EmbeddedRedis, target: EmbeddedRedis
    ) -> None:
        self.cluster = cluster
        self.slot = slot
        self.source = source
        self.target = target
        self.moved = 0

    def _connect(self, node: EmbeddedRedis) -> redis.Redis:
        return connect(node, self.cluster.password)

    def begin(self) -> None:
        """IMPORTING on the target first, then MIGRATING on the source, as redis-cli does."""
        source_id = self.cluster.node_id(self.source)
        target_id = self.cluster.node_id(self.target)
        with self._connect(self.target) as target:
            target.execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", source_id)
        with self._connect(self.source) as source:
            source.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", target_id)

    def move_keys(self, limit: int | None = None, batch: int = 100) -> int:
        """MIGRATE up to ``limit`` (default: all) of the slot's keys; how many moved."""
        moved = 0
        authentication = ["AUTH", self.cluster.password] if self.cluster.password else []
        with self._connect(self.source) as source:
            while limit is None or moved < limit:
                count = batch if limit is None else min(batch, limit - moved)
                keys = source.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, count)
                if not keys:
                    break
                source.execute_command(
                    "MIGRATE", self.target.host, self.target.port, "", 0, MIGRATE_TIMEOUT_MS,
                    *authentication, "KEYS", *keys,
                )  # fmt: skip
                moved += len(keys)
        self.moved += moved
        return moved

    def finish(self) -> None:
        """Move the keys left, then give the slot to the target on every primary."""
        self.move_keys()
        target_id = self.cluster.node_id(self.target)
        others = [n for n in self.cluster.primaries() if n not in (self.source, self.target)]
        for node in (self.target, self.source, *others):
            with self._connect(node) as connection:
                connection.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", target_id)
