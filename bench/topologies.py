"""Where the benchmark runs: one embedded server, the same behind a TLS proxy, or a
3-primary cluster. Each says what rpc-redis is given (``url``), where the floor's
worker and client connect (``floor_url``: the TLS endpoint, or the cluster node that
serves the floor's queue, its reply keys hash-tagged into that slot), and which Redis
processes and nodes to measure."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rpc_redis.embedded import EmbeddedRedis
from rpc_redis.topologies import EmbeddedCluster, TlsRedis, make_certificates

FLOOR_QUEUE = "floor:1"


@dataclass(frozen=True)
class Topology:
    name: str
    url: str
    floor_url: str
    redis_pids: list[int]
    node_urls: list[str]  # plain URLs of the data nodes, for INFO commandstats
    note: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def node(server: EmbeddedRedis) -> Topology:
    assert server.pid is not None
    return Topology("node", server.url, server.url, [server.pid], [server.url])


@contextmanager
def tls() -> Iterator[Topology]:
    """The embedded server behind the TLS proxy (certificates of this run's own CA);
    the floor goes through the same proxy."""
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as directory:
        with TlsRedis(make_certificates(Path(directory))) as server:
            assert server.server.pid is not None
            url = server.url_with_certificates()
            yield Topology(
                "tls", url, url, [server.server.pid], [server.server.url],
                note="through the TLS proxy, a process of its own; the floor too",
            )  # fmt: skip


@contextmanager
def cluster() -> Iterator[Topology]:
    """Three primaries, no replicas; the floor talks to the node serving its queue."""
    with EmbeddedCluster(primaries=3, replicas=0) as nodes:
        owner = nodes.node_for_key(FLOOR_QUEUE)
        yield Topology(
            "cluster", nodes.url, owner.url, nodes.pids, [n.url for n in nodes.nodes],
            note="3 primaries; the floor on the node serving its queue",
        )  # fmt: skip
