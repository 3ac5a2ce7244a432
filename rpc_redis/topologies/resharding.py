"""Moving one slot with its keys between two primaries, in the steps clients meet.

The same dance as ``redis-cli --cluster reshard``: IMPORTING on the target, MIGRATING on
the source, MIGRATE the keys, then SETSLOT NODE everywhere. In between, the source answers
ASK for a key already moved; afterwards, every key of the slot is a MOVED.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from ..embedded import EmbeddedRedis
from .nodes import connect

MIGRATE_TIMEOUT_MS = 5000


class SlotMigration:
    """One slot moving from ``source`` to ``target``, in the steps clients can meet.

    Between :meth:`begin` and :meth:`finish`, a key already moved is answered with ASK by
    the source; after :meth:`finish`, every key of the slot with MOVED.
    """

    def __init__(
        self,
        slot: int,
        source: EmbeddedRedis,
        target: EmbeddedRedis,
        *,
        source_id: str,
        target_id: str,
        other_primaries: Sequence[EmbeddedRedis] = (),
        password: str | None = None,
    ) -> None:
        self.slot = slot
        self.source = source
        self.target = target
        self.source_id = source_id
        self.target_id = target_id
        self.other_primaries = list(other_primaries)  # told the new owner at the end too
        self.password = password
        self.moved = 0

    def _connect(self, node: EmbeddedRedis) -> redis.Redis:
        return connect(node, self.password)

    def begin(self) -> None:
        """IMPORTING on the target first, then MIGRATING on the source, as redis-cli does."""
        with self._connect(self.target) as target:
            target.execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", self.source_id)
        with self._connect(self.source) as source:
            source.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.target_id)

    def move_keys(self, limit: int | None = None, batch: int = 100) -> int:
        """MIGRATE up to ``limit`` (default: all) of the slot's keys; how many moved."""
        moved = 0
        authentication = ["AUTH", self.password] if self.password else []
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
        for node in (self.target, self.source, *self.other_primaries):
            with self._connect(node) as connection:
                connection.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", self.target_id)
