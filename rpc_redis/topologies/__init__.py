"""Production-shaped Redis on loopback, for tests: Sentinel, Cluster, TLS, ACL users, unix sockets.

Every process is a real one (the embedded redis-server, redis-cli, a TLS proxy), started
on a free port in a temporary directory and stopped by its pid. One module per topology:
``sentinel``, ``cluster``, ``tls`` (with ``tls_proxy``, the proxy process itself), and
``nodes`` for what they share. ``python -m rpc_redis.topologies`` runs one in the foreground.
"""

from .cluster import ClusterNodeState, EmbeddedCluster, free_cluster_port
from .nodes import Address, TopologyError, UnixSocketRedis, poll_until, set_acl_users
from .resharding import SlotMigration
from .sentinel import SentinelSet
from .tls import TlsFiles, TlsProxy, TlsRedis, make_certificates

__all__ = [
    "Address",
    "ClusterNodeState",
    "EmbeddedCluster",
    "SentinelSet",
    "SlotMigration",
    "TlsFiles",
    "TlsProxy",
    "TlsRedis",
    "TopologyError",
    "UnixSocketRedis",
    "free_cluster_port",
    "make_certificates",
    "poll_until",
    "set_acl_users",
]
