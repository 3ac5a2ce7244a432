"""A primary, a replica and three sentinels on loopback, for failover on real processes.

Each node and each sentinel is an :class:`~rpc_redis.embedded.EmbeddedRedis` with its own
directory and port; a sentinel is the same binary run with its own config file and
``--sentinel``. Timeouts are short, so that a killed primary is replaced in a few seconds.

    with SentinelSet() as sentinels:
        old = sentinels.primary_address()
        sentinels.kill_primary()
        new = sentinels.wait_for_failover(old)
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import redis

from ..embedded import EmbeddedRedis
from .nodes import (
    Address,
    DataNodes,
    TopologyError,
    address_of,
    connect,
    in_sync,
    multi_host_url,
    poll_until,
    replication,
    require_password,
)

MASTER_NAME = "rpc-primary"
START_TIMEOUT = 30.0
FAILOVER_TIMEOUT = 30.0


class SentinelSet(DataNodes):
    """Two data nodes (primary and replica) watched by ``sentinel_count`` sentinels.

    ``password`` locks the data nodes (``requirepass``, and ``masterauth`` for the replica;
    the sentinels get ``auth-pass``); ``sentinel_password`` locks the sentinels themselves.
    """

    def __init__(
        self,
        *,
        master_name: str = MASTER_NAME,
        sentinel_count: int = 3,
        quorum: int = 2,
        password: str | None = None,
        sentinel_password: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 2000,
        executable: str | None = None,
    ) -> None:
        super().__init__([EmbeddedRedis(executable=executable) for _ in range(2)], password)
        self.master_name = master_name
        self.quorum = quorum
        self.sentinel_password = sentinel_password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.sentinels = [EmbeddedRedis(executable=executable) for _ in range(sentinel_count)]

    # -- starting ------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> SentinelSet:
        """Start the nodes, then the sentinels; return once every sentinel knows the
        primary, the replica and the other sentinels, and the replica is in sync."""
        try:
            primary, replica = self.nodes
            self._start_node(primary, replica_of=None, timeout=timeout)
            self._start_node(replica, replica_of=address_of(primary), timeout=timeout)
            for sentinel in self.sentinels:
                self._start_sentinel(sentinel, address_of(primary), timeout)
            self._wait_until_watched(address_of(primary), timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _start_node(self, node: EmbeddedRedis, replica_of: Address | None, timeout: float) -> None:
        arguments = () if replica_of is None else ("--replicaof", replica_of[0], str(replica_of[1]))
        self.start_node(node, arguments, timeout)
        if replica_of is not None:
            poll_until(lambda: in_sync(node, self.password), timeout, f"{node.url} in sync")

    def _start_sentinel(self, sentinel: EmbeddedRedis, primary: Address, timeout: float) -> None:
        name = self.master_name
        lines = [
            f"sentinel monitor {name} {primary[0]} {primary[1]} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.password is not None:
            lines.append(f"sentinel auth-pass {name} {self.password}")
        if self.sentinel_password is not None:
            # What a sentinel sends to the others; require_password is what it asks of them.
            lines.append(f"sentinel sentinel-pass {self.sentinel_password}")
        sentinel.config_file = sentinel.directory / "sentinel.conf"
        sentinel.config_file.write_text("\n".join(lines) + "\n")
        sentinel.extra_args = ("--sentinel",)
        sentinel.start(timeout)
        require_password(sentinel, self.sentinel_password)

    def _wait_until_watched(self, primary: Address, timeout: float) -> None:
        """Until every running sentinel names ``primary`` and counts a replica linked to it
        and all the other sentinels."""
        poll_until(
            lambda: all(self._sentinel_sees_all(s, primary) for s in self.sentinels if s.process),
            timeout,
            f"every sentinel knows the primary {primary}, its replica and the other sentinels",
        )

    def _sentinel_sees_all(self, sentinel: EmbeddedRedis, primary: Address) -> bool:
        name = self.master_name
        with connect(sentinel, self.sentinel_password) as connection:
            if self._reported_primary(connection) != primary:
                return False
            replicas = connection.execute_command("SENTINEL", "REPLICAS", name)
            others = connection.execute_command("SENTINEL", "SENTINELS", name)
        healthy = [r for r in map(_fields, replicas) if _healthy_replica(r)]
        return len(healthy) >= len(self.nodes) - 1 and len(others) >= len(self.sentinels) - 1

    # -- looking -------------------------------------------------------------------------

    @property
    def sentinel_addresses(self) -> list[Address]:
        return [address_of(sentinel) for sentinel in self.sentinels]

    @property
    def url(self) -> str:
        """``redis+sentinel://[:password@]host:port,.../MASTER_NAME/0[?sentinel_password=]``."""
        query = ""
        if self.sentinel_password:
            query = f"?sentinel_password={quote(self.sentinel_password, safe='')}"
        path = f"/{self.master_name}/0{query}"
        return multi_host_url("redis+sentinel", self.sentinel_addresses, self.password, path)

    def reported_primaries(self) -> list[Address | None]:
        """The primary each running sentinel reports (None where one does not answer)."""
        reports: list[Address | None] = []
        for sentinel in self.sentinels:
            if sentinel.process is None:
                continue
            try:
                with connect(sentinel, self.sentinel_password) as connection:
                    reports.append(self._reported_primary(connection))
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                reports.append(None)
        return reports

    def _reported_primary(self, sentinel: Any) -> Address | None:
        """What one sentinel (a connection: redis-py's are untyped) names as the primary."""
        reply = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        if not reply:
            return None
        host, port = reply
        return (str(host), int(port))

    def primary_address(self) -> Address:
        """The primary as the sentinels report it: the first one that answers."""
        for reported in self.reported_primaries():
            if reported is not None:
                return reported
        raise TopologyError(f"no sentinel of {self.sentinel_addresses} names a primary")

    @property
    def pids(self) -> list[int]:
        """The pids of every process of the set now running."""
        return [p.pid for p in (*self.nodes, *self.sentinels) if p.pid is not None]

    # -- faults --------------------------------------------------------------------------

    def kill_primary(self) -> EmbeddedRedis:
        """SIGKILL the node the sentinels report as primary, as a crash would; that node."""
        node = self.node_at(self.primary_address())
        node.kill()
        return node

    def wait_for_failover(self, old_primary: Address, timeout: float = FAILOVER_TIMEOUT) -> Address:
        """Block until every running sentinel reports one new primary and that node is a
        primary; its address."""

        def promoted() -> Address | None:
            reports = set(self.reported_primaries())
            if len(reports) != 1:
                return None
            (new,) = reports
            if new is None or new == old_primary:
                return None
            role = replication(self.node_at(new), self.password).get("role")
            return new if role == "master" else None

        return poll_until(promoted, timeout, f"a replica of {old_primary} promoted")

    def restart(self, node: EmbeddedRedis, timeout: float = START_TIMEOUT) -> EmbeddedRedis:
        """Start a killed node again as a replica of the current primary, as an operator
        would, and wait until it is in sync and every sentinel counts it as a replica."""
        primary = self.primary_address()
        self._start_node(node, replica_of=primary, timeout=timeout)
        self._wait_until_watched(primary, timeout)
        return node

    # -- stopping ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every process by its pid: the sentinels first, so that none fails over."""
        for process in (*self.sentinels, *self.nodes):
            process.stop()

    def close(self) -> None:
        """Stop everything and remove the directories."""
        for process in (*self.sentinels, *self.nodes):
            process.close()

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _healthy_replica(fields: dict[str, object]) -> bool:
    """Seen by the sentinel as a replica now linked to its primary (a freshly listed one,
    such as the old primary after a failover, has no link status until the sentinel asks)."""
    flags = str(fields.get("flags")).split(",")
    return (
        "slave" in flags
        and fields.get("master-link-status") == "ok"
        and not ({"s_down", "o_down", "disconnected"} & set(flags))
    )


def _fields(flat: object) -> dict[str, object]:
    """A sentinel's flat ``[name, value, name, value, ...]`` reply as a dict."""
    if isinstance(flat, dict):
        return flat
    items = list(flat)  # type: ignore[call-overload]
    return dict(zip(items[::2], items[1::2], strict=False))
