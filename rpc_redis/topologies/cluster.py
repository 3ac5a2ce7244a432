"""A Redis Cluster on loopback: N primaries, optionally a replica each, made by redis-cli.

The nodes are :class:`~rpc_redis.embedded.EmbeddedRedis` processes run with
``--cluster-enabled yes`` and joined by ``redis-cli --cluster create``. Helpers move one
slot with its keys between primaries while clients run (so that they meet ASK, then MOVED)
and kill a primary for its replica to take over.

    with EmbeddedCluster(primaries=3, replicas=1) as cluster:
        slot = cluster.slot_of("rpc:queue:{calculator}")
        cluster.migrate_slot(slot, to=cluster.primaries()[1])
"""

from __future__ import annotations

import random
import socket
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from ..embedded import EmbeddedRedis, EmbeddedRedisError, find_cli_binary
from .nodes import (
    Address,
    DataNodes,
    TopologyError,
    address_of,
    connect,
    in_sync,
    multi_host_url,
    poll_until,
)
from .resharding import SlotMigration

START_TIMEOUT = 30.0
FAILOVER_TIMEOUT = 30.0
# Redis 6.2 puts a node's cluster bus on its port + 10000 (no cluster-port before 7.0): keep
# both below the kernel's ephemeral range (32768 and up), so that no outgoing socket takes one.
CLUSTER_PORTS = range(10000, 22000)
BUS_PORT_OFFSET = 10000


def free_cluster_port(host: str = "127.0.0.1") -> int:
    """A port that is free, and whose cluster-bus port (+10000) is free too."""
    for _ in range(200):
        port = random.choice(CLUSTER_PORTS)
        if _bindable(host, port) and _bindable(host, port + BUS_PORT_OFFSET):
            return port
    raise TopologyError(f"no free port pair (p, p+{BUS_PORT_OFFSET}) in {CLUSTER_PORTS}")


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class EmbeddedCluster(DataNodes):
    """``primaries`` primaries, each with ``replicas`` replicas, as one Redis Cluster.

    ``password`` locks every node (``requirepass``, ``masterauth``); redis-cli and
    MIGRATE are given it. ``node_timeout_ms`` is short, so that a failover takes seconds.
    """

    def __init__(
        self,
        primaries: int = 3,
        *,
        replicas: int = 0,
        password: str | None = None,
        node_timeout_ms: int = 1000,
        executable: str | None = None,
    ) -> None:
        if primaries < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 primaries")
        nodes = [
            EmbeddedRedis(free_cluster_port(), executable=executable)
            for _ in range(primaries * (1 + replicas))
        ]
        super().__init__(nodes, password)
        self.replicas_per_primary = replicas
        self.node_timeout_ms = node_timeout_ms
        self.create_output = ""  # what redis-cli --cluster create said
        self._node_ids: dict[Address, str] = {}
        self._slots_of_killed: dict[str, list[int]] = {}

    # -- starting ------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> EmbeddedCluster:
        """Start every node, join them with ``redis-cli --cluster create`` and return once
        every node says ``cluster_state:ok`` and every replica is in sync."""
        try:
            for node in self.nodes:
                self._start_node(node, timeout)
            self._create(timeout)
            self.wait_until_ok(timeout)
            for node in self.nodes:
                self._node_ids[address_of(node)] = self._myid(node)
        except BaseException:
            self.close()
            raise
        return self

    def _start_node(self, node: EmbeddedRedis, timeout: float) -> None:
        arguments = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",  # in the node's own directory
            "--cluster-node-timeout", str(self.node_timeout_ms),
        )  # fmt: skip
        self.start_node(node, arguments, timeout)

    def _create(self, timeout: float) -> None:
        cli = find_cli_binary()
        if cli is None:
            raise EmbeddedRedisError("no redis-cli found to create the cluster")
        command = [cli, "--cluster", "create"]
        command += [f"{node.host}:{node.port}" for node in self.nodes]
        command += ["--cluster-replicas", str(self.replicas_per_primary), "--cluster-yes"]
        if self.password is not None:
            command += ["-a", self.password, "--no-auth-warning"]
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0 or "[OK] All 16384 slots covered" not in result.stdout:
            shown = " ".join(command[: 3 + len(self.nodes)])  # not the password
            raise TopologyError(f"{shown} failed:\n{result.stdout}{result.stderr}")
        self.create_output = result.stdout

    def wait_until_ok(self, timeout: float = START_TIMEOUT) -> None:
        """Block until every running node says ``cluster_state:ok``, knows every node, none
        marked failing, all with one view of roles and slots, every replica in sync."""

        unsettled = ["nothing asked yet"]  # why the last probe said no, for the timeout

        def settled() -> bool:
            running = {address_of(node) for node in self.running_nodes()}
            views = set()
            for node in self.running_nodes():
                where = "{}:{}".format(*address_of(node))
                with connect(node, self.password) as connection:
                    info = connection.execute_command("CLUSTER", "INFO")
                    role = connection.info("replication")["role"]
                    view = _states(connection.execute_command("CLUSTER", "NODES"))
                if "cluster_state:ok" not in info:
                    unsettled[0] = f"{where} is not cluster_state:ok"
                    return False
                if len(view) != len(self.nodes):
                    unsettled[0] = f"{where} knows {len(view)} of {len(self.nodes)} nodes"
                    return False
                failing = [state.address for state in view if state.failed]
                if set(failing) & running:
                    unsettled[0] = f"{where} sees running nodes failing: {failing}"
                    return False
                if role == "slave" and not in_sync(node, self.password):
                    unsettled[0] = f"{where}, a replica, is not in sync"
                    return False
                views.add(frozenset(state.roles_and_slots() for state in view))
            unsettled[0] = f"{len(views)} views of roles and slots"
            return len(views) == 1  # every node sees the same primaries, replicas and slots

        try:
            poll_until(
                settled,
                timeout,
                "cluster_state:ok and one view of the nodes on each, replicas in sync",
            )
        except TopologyError as exc:
            raise TopologyError(f"{exc}; last seen: {unsettled[0]}") from None

    def _myid(self, node: EmbeddedRedis) -> str:
        with connect(node, self.password) as connection:
            return str(connection.execute_command("CLUSTER", "MYID"))

    # -- looking -------------------------------------------------------------------------

    @property
    def startup_nodes(self) -> list[Address]:
        return [address_of(node) for node in self.nodes]

    @property
    def url(self) -> str:
        """``redis+cluster://[:password@]host:port,host:port,...`` (every node a seed)."""
        return multi_host_url("redis+cluster", self.startup_nodes, self.password)

    def client(self, **options: Any) -> redis.RedisCluster:
        """A redis-py ``RedisCluster`` with every node as a seed; ``options`` are its own."""
        seeds = [
            redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in self.startup_nodes
        ]
        options = {"password": self.password, "decode_responses": True, **options}
        return redis.RedisCluster(startup_nodes=seeds, **options)

    def node_id(self, node: EmbeddedRedis) -> str:
        return self._node_ids[address_of(node)]

    def topology(self) -> list[ClusterNodeState]:
        """What a running node's ``CLUSTER NODES`` says of every node."""
        with connect(self.running_nodes()[0], self.password) as connection:
            return _states(connection.execute_command("CLUSTER", "NODES"))

    def primaries(self) -> list[EmbeddedRedis]:
        """The running nodes that are primaries now, and serve slots."""
        return [
            self.node_at(state.address)
            for state in self.topology()
            if state.is_primary and state.slots and not state.failed
        ]

    def replicas_of(self, primary: EmbeddedRedis) -> list[EmbeddedRedis]:
        primary_id = self.node_id(primary)
        return [self.node_at(s.address) for s in self.topology() if s.primary_id == primary_id]

    def slot_of(self, key: str) -> int:
        with connect(self.running_nodes()[0], self.password) as connection:
            return int(connection.execute_command("CLUSTER", "KEYSLOT", key))

    def node_for_slot(self, slot: int) -> EmbeddedRedis:
        """The primary that serves ``slot`` now, as ``CLUSTER SLOTS`` says."""
        with connect(self.running_nodes()[0], self.password) as connection:
            ranges = connection.execute_command("CLUSTER", "SLOTS")
        for first, last, owner in _slot_map(ranges):
            if first <= slot <= last:
                return self.node_at(owner)
        raise TopologyError(f"no node serves slot {slot}")

    def node_for_key(self, key: str) -> EmbeddedRedis:
        return self.node_for_slot(self.slot_of(key))

    @property
    def pids(self) -> list[int]:
        return [node.pid for node in self.nodes if node.pid is not None]

    # -- resharding ----------------------------------------------------------------------

    def begin_slot_migration(self, slot: int, to: EmbeddedRedis) -> SlotMigration:
        """Mark ``slot`` IMPORTING on ``to`` and MIGRATING on its owner; move keys with
        :meth:`SlotMigration.move_keys`, end with :meth:`SlotMigration.finish`."""
        source = self.node_for_slot(slot)
        if source is to:
            raise TopologyError(f"slot {slot} is already on {to.url}")
        migration = SlotMigration(
            slot,
            source,
            to,
            source_id=self.node_id(source),
            target_id=self.node_id(to),
            other_primaries=[node for node in self.primaries() if node not in (source, to)],
            password=self.password,
        )
        migration.begin()
        return migration

    def migrate_slot(self, slot: int, to: EmbeddedRedis) -> None:
        """Move ``slot`` and all its keys to the primary ``to``, as redis-cli reshard does."""
        migration = self.begin_slot_migration(slot, to)
        migration.move_keys()
        migration.finish()

    # -- faults --------------------------------------------------------------------------

    def kill_primary(self, node: EmbeddedRedis | None = None) -> EmbeddedRedis:
        """SIGKILL a primary (the first serving one by default), as a crash would; that
        node. Its slots are noted, for :meth:`wait_for_failover` to follow them."""
        node = node or self.primaries()[0]
        node_id = self.node_id(node)
        self._slots_of_killed[node_id] = [
            slot for state in self.topology() if state.node_id == node_id for slot in state.slots
        ]
        node.kill()
        return node

    def wait_for_failover(
        self, killed: EmbeddedRedis, timeout: float = FAILOVER_TIMEOUT
    ) -> EmbeddedRedis:
        """Block until another running node serves every slot the killed primary served
        (its replica, promoted) and the cluster is ok on every running node; that node."""
        slots = self._slots_of_killed.get(self.node_id(killed))
        if not slots:
            raise TopologyError(f"{killed.url} was not killed by kill_primary")

        def promoted() -> EmbeddedRedis | None:
            owners = {self.node_for_slot(slot) for slot in (slots[0], slots[-1])}
            (owner, *others) = owners
            return owner if not others and owner is not killed and owner.process else None

        replica = poll_until(promoted, timeout, f"a replica of {killed.url} promoted")
        self.wait_until_ok(timeout)
        return replica

    def restart(self, node: EmbeddedRedis, timeout: float = START_TIMEOUT) -> EmbeddedRedis:
        """Start a killed node again; it reads its nodes.conf and rejoins (a former primary
        whose slots moved comes back as a replica). Returns once the cluster is ok."""
        self._start_node(node, timeout)

        def rejoined() -> bool:
            (state,) = [s for s in self.topology() if s.address == address_of(node)]
            return not state.failed and (not state.is_primary or bool(state.slots))

        # Until the others' UPDATE reaches it, a former primary is briefly one without slots.
        poll_until(rejoined, timeout, f"{node.url} back as a replica or with its slots")
        self.wait_until_ok(timeout)
        return node

    # -- stopping ------------------------------------------------------------------------

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        """Stop every node by its pid and remove the directories."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class ClusterNodeState:
    """One line of ``CLUSTER NODES``: who a node is, its role and the slots it serves."""

    node_id: str
    address: Address
    flags: frozenset[str]
    primary_id: str | None
    slots: tuple[int, ...]

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return "fail" in self.flags or "fail?" in self.flags

    def roles_and_slots(self) -> tuple[str, bool, str | None, tuple[int, ...]]:
        """What every node must agree on: who it is, whether primary, of whom, which slots."""
        return (self.node_id, self.is_primary, self.primary_id, self.slots)

    @classmethod
    def parse(cls, line: str) -> ClusterNodeState:
        node_id, endpoint, flags, primary, _ping, _pong, _epoch, _link, *ranges = line.split()
        # "127.0.0.1:7000@17000" (Redis 6.2), "127.0.0.1:7000@17000,hostname" (7 and later)
        host, port = endpoint.split("@")[0].rsplit(":", 1)
        slots: list[int] = []
        for served in ranges:
            if served.startswith("["):  # "[slot->-id]" or "[slot-<-id]": migrating, importing
                continue
            first, _, last = served.partition("-")
            slots.extend(range(int(first), int(last or first) + 1))
        return cls(
            node_id=node_id,
            address=(host, int(port)),
            flags=frozenset(flags.split(",")),
            primary_id=None if primary == "-" else primary,
            slots=tuple(slots),
        )


def _slot_map(ranges: Iterable[Sequence[object]]) -> frozenset[tuple[int, int, Address]]:
    """``CLUSTER SLOTS`` as (first, last, primary) triples."""
    triples = set()
    for first, last, owner, *_ in ranges:
        host, port = owner[:2]  # type: ignore[index]
        triples.add((int(first), int(last), (str(host), int(port))))  # type: ignore[call-overload]
    return frozenset(triples)


def _states(listing: object) -> list[ClusterNodeState]:
    """``CLUSTER NODES``, parsed: one state per node."""
    text = listing.decode() if isinstance(listing, bytes) else str(listing)
    return [ClusterNodeState.parse(line) for line in text.splitlines() if line.strip()]
