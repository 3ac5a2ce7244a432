"""The one resolver: from where Redis is (a URL, or a client or pool the user built) to
what every part of the library needs, sync and async alike.

``Client``, ``AsyncClient``, ``Worker`` (and so ``rpc-worker`` and its supervisor) and
``rpc-admin`` all call :func:`resolve` and ask the :class:`RedisTarget` it gives for
pools (one node, or the primary Sentinel names, followed through failovers) or routes
(a pool per node of a cluster, chosen by hash slot; see ``routes.py``).
"""

from __future__ import annotations

import threading
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.connection
import redis.retry
import redis.sentinel
from redis.backoff import NoBackoff

from .raw import CONNECT_TIMEOUT, pool_options
from .routes import AsyncRoutes, SlotMap, SyncRoutes
from .sentinels import AsyncSentinels, SyncSentinels
from .tls import (
    AsyncCheckedConnection,
    AsyncCheckedSSLConnection,
    CheckedConnection,
    CheckedSSLConnection,
)
from .urls import Address, Location, default_url, parse_location, redact_url

# What a client or pool the user built says of its connections that ours copy.
COPIED_OPTIONS = (
    "username", "password", "credential_provider", "db", "socket_timeout",
    "socket_connect_timeout", "socket_keepalive", "socket_keepalive_options",
    "encoding", "encoding_errors", "decode_responses", "protocol", "host", "port", "path",
)  # fmt: skip
SENTINEL_TIMEOUT = 2.0
# The sentinels' own connections: asked rarely, never allowed to hang a call.
SENTINEL_OPTIONS = {"socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT}


class RedisTarget:
    """Where Redis is, resolved once, and the pools and routes to reach it.

    ``kind`` is ``node`` (one server: TCP, TLS or a unix socket), ``sentinel`` (the
    primary its sentinels name, followed through failovers) or ``cluster``. ``where``
    names it for people, without passwords. Pools asked for with ``shared=True`` are the
    user's own, when a pool or client was given; otherwise each call builds a new one
    with the same connection settings and the ``options`` given.
    """

    def __init__(
        self,
        location: Location,
        *,
        node_options: dict[str, Any],
        sync_class: type[Any] = CheckedConnection,
        given_sync: redis.ConnectionPool | None = None,
        given_async: redis.asyncio.ConnectionPool | None = None,
    ) -> None:
        self.location = location
        self.kind = location.kind
        self.where = location.where
        self.node_options = node_options
        self.sync_class, self.async_class = _twins_of(sync_class)
        self._given_sync = given_sync
        self._given_async = given_async
        self.slot_map = SlotMap(location.addresses) if self.kind == "cluster" else None
        self._sentinels: dict[bool, Any] = {}
        self._lock = threading.Lock()

    @property
    def is_cluster(self) -> bool:
        return self.kind == "cluster"

    @property
    def follows_failover(self) -> bool:
        """Whether a lost primary is replaced (Sentinel, Cluster): worth riding out."""
        return self.kind != "node"

    # -- pools ----------------------------------------------------------------------------

    def sync_pool(self, *, shared: bool = False, **options: Any) -> redis.ConnectionPool:
        """A pool of the one node, or of the primary Sentinel names (not for a cluster)."""
        if shared and self._given_sync is not None:
            return self._given_sync
        options = pool_options({**self.node_options, **options})
        if self.kind == "sentinel":
            return redis.sentinel.SentinelConnectionPool(  # type: ignore[no-untyped-call]
                self.location.service_name, self._sentinel(asynchronous=False), **options
            )
        self._refuse_cluster()
        return redis.ConnectionPool(connection_class=self.sync_class, **options)

    def async_pool(self, *, shared: bool = False, **options: Any) -> redis.asyncio.ConnectionPool:
        """The asyncio twin of :meth:`sync_pool`."""
        if shared and self._given_async is not None:
            return self._given_async
        options = pool_options({**self.node_options, **options})
        if self.kind == "sentinel":
            return redis.asyncio.sentinel.SentinelConnectionPool(  # type: ignore[no-untyped-call]
                self.location.service_name, self._sentinel(asynchronous=True), **options
            )
        self._refuse_cluster()
        return redis.asyncio.ConnectionPool(connection_class=self.async_class, **options)

    def sync_routes(self, *, shared: bool = False, **options: Any) -> SyncRoutes:
        """Where each command goes, for sync code: one pool, or a pool per cluster node."""
        if self.slot_map is None:
            # A pool the user gave is theirs to share: each connection goes back to it.
            given = shared and self._given_sync is not None
            return SyncRoutes(self.sync_pool(shared=shared, **options), keep_connections=not given)
        return SyncRoutes(
            slot_map=self.slot_map,
            make_pool=lambda address: self._node_sync_pool(address, options),
        )

    def async_routes(self, *, shared: bool = False, **options: Any) -> AsyncRoutes:
        """The asyncio twin of :meth:`sync_routes`."""
        if self.slot_map is None:
            given = shared and self._given_async is not None
            return AsyncRoutes(
                self.async_pool(shared=shared, **options), keep_connections=not given
            )
        return AsyncRoutes(
            slot_map=self.slot_map,
            make_pool=lambda address: self._node_async_pool(address, options),
        )

    def cluster_client(self, **options: Any) -> redis.RedisCluster:
        """redis-py's ``RedisCluster`` for this cluster, for rpc-admin's commands."""
        assert self.slot_map is not None, "not a cluster"
        seeds = [redis.cluster.ClusterNode(host, port) for host, port in self.slot_map.seeds]  # type: ignore[no-untyped-call]
        settings = {**self.node_options, **options}
        if issubclass(self.sync_class, redis.SSLConnection):
            settings["ssl"] = True
        return redis.RedisCluster(
            startup_nodes=seeds, socket_connect_timeout=CONNECT_TIMEOUT, **settings
        )

    def _node_sync_pool(self, address: Address, options: dict[str, Any]) -> redis.ConnectionPool:
        host, port = address
        settings = pool_options({**self.node_options, **options, "host": host, "port": port})
        return redis.ConnectionPool(connection_class=self.sync_class, **settings)

    def _node_async_pool(
        self, address: Address, options: dict[str, Any]
    ) -> redis.asyncio.ConnectionPool:
        host, port = address
        settings = pool_options({**self.node_options, **options, "host": host, "port": port})
        return redis.asyncio.ConnectionPool(connection_class=self.async_class, **settings)

    def _sentinel(self, *, asynchronous: bool) -> Any:
        """The sentinels' client, one per flavour, shared by every pool made here."""
        with self._lock:
            manager = self._sentinels.get(asynchronous)
            if manager is None:
                manager_class = AsyncSentinels if asynchronous else SyncSentinels
                settings = pool_options({**SENTINEL_OPTIONS, **self.location.sentinel_options})
                # One sentinel not answering is asked no more: the next one is.
                retry_class = redis.asyncio.retry.Retry if asynchronous else redis.retry.Retry
                settings["retry"] = retry_class(NoBackoff(), 0)
                manager = manager_class(list(self.location.addresses), sentinel_kwargs=settings)
                self._sentinels[asynchronous] = manager
            return manager

    def close(self) -> None:
        """Close the connections to the sentinels made for the sync pools."""
        manager = self._sentinels.pop(False, None)
        for sentinel in getattr(manager, "sentinels", ()):
            sentinel.close()

    async def aclose(self) -> None:
        """Close the connections to the sentinels made here, of both flavours."""
        self.close()
        manager = self._sentinels.pop(True, None)
        for sentinel in getattr(manager, "sentinels", ()):
            await sentinel.aclose()

    def _refuse_cluster(self) -> None:
        if self.kind == "cluster":
            raise TypeError("a Redis Cluster has a pool per node: ask for routes")


def resolve(url: str | None = None, redis_object: Any = None) -> RedisTarget:
    """Where Redis is: a URL (``RPC_REDIS_URL``, then ``REDIS_URL``, then localhost, if
    None), or a redis-py client or pool the user built (``redis_object``). A URL that
    cannot be read is an RpcConfigurationError naming it redacted."""
    if redis_object is not None:
        if url is not None:
            raise TypeError("give a Redis URL or a client or pool, not both")
        return from_redis_object(redis_object)
    location = parse_location(url or default_url())
    if location.kind != "node":
        return RedisTarget(location, node_options=dict(location.options))
    options = redis.connection.parse_url(location.url)  # type: ignore[no-untyped-call]
    sync_class = options.pop("connection_class", CheckedConnection)
    return RedisTarget(location, node_options=options, sync_class=sync_class)


def from_redis_object(given: Any) -> RedisTarget:
    """The target of a ``redis.Redis``, ``redis.asyncio.Redis``, ``RedisCluster`` (either
    flavour) or connection pool (either flavour, Sentinel's included)."""
    if isinstance(given, (redis.RedisCluster, redis.asyncio.RedisCluster)):
        return _from_cluster(given)
    pool = getattr(given, "connection_pool", given)
    if not isinstance(pool, (redis.ConnectionPool, redis.asyncio.ConnectionPool)):
        raise TypeError(
            "redis= takes a redis-py client (Redis, RedisCluster, sync or asyncio) or a "
            f"connection pool, not {type(given).__name__}"
        )
    given_sync = pool if isinstance(pool, redis.ConnectionPool) else None
    given_async = pool if isinstance(pool, redis.asyncio.ConnectionPool) else None
    options = _copied(pool.connection_kwargs)
    sync_class = _twins_of(pool.connection_class)[0]
    manager = getattr(pool, "sentinel_manager", None)
    if manager is not None:
        sentinels = [_address_of(sentinel) for sentinel in manager.sentinels]
        sentinel_options = _copied(manager.sentinels[0].connection_pool.connection_kwargs)
        for name in ("host", "port", "db"):
            sentinel_options.pop(name, None)
        name = str(pool.service_name)  # type: ignore[union-attr]
        location = Location(
            "sentinel", _described("redis+sentinel", sentinels, f"/{name}"), tuple(sentinels),
            name, options, sentinel_options,
        )  # fmt: skip
        for key in ("host", "port"):
            options.pop(key, None)
        return RedisTarget(
        location, node_options=options, sync_class=sync_class, given_sync=given_sync,
        given_async=given_async,
    )  # fmt: skip
    if "path" in options:
        shown = f"unix://{options['path']}?db={options.get('db', 0)}"
    else:
        scheme = "rediss" if "SSL" in pool.connection_class.__name__ else "redis"
        host, port = options.get("host", "localhost"), options.get("port", 6379)
        shown = f"{scheme}://{host}:{port}/{options.get('db', 0)}"
    location = Location("node", shown)
    return RedisTarget(
        location, node_options=options, sync_class=sync_class, given_sync=given_sync,
        given_async=given_async,
    )  # fmt: skip


def _from_cluster(cluster: redis.RedisCluster | redis.asyncio.RedisCluster) -> RedisTarget:
    if isinstance(cluster, redis.RedisCluster):
        settings = cluster.nodes_manager.connection_kwargs
    else:
        settings = cluster.get_connection_kwargs()
    # An asyncio RedisCluster knows its nodes only once it has connected: its seeds, then.
    nodes = cluster.get_nodes() or list(cluster.nodes_manager.startup_nodes.values())
    seeds = [(str(node.host), int(node.port)) for node in nodes]
    options = _copied(settings)
    for name in ("host", "port", "db", "path"):
        options.pop(name, None)
    sync_class = settings.get("connection_class", CheckedConnection)
    location = Location("cluster", _described("redis+cluster", seeds, ""), tuple(seeds))
    return RedisTarget(location, node_options=options, sync_class=_twins_of(sync_class)[0])


def _twins_of(connection_class: type[Any]) -> tuple[type[Any], type[Any]]:
    """The sync and asyncio connection classes standing for ``connection_class``, of either
    flavour (a subclass of the user's maps to the redis-py class it extends)."""
    if issubclass(connection_class, (redis.SSLConnection, redis.asyncio.SSLConnection)):
        return CheckedSSLConnection, AsyncCheckedSSLConnection
    unix = (redis.UnixDomainSocketConnection, redis.asyncio.UnixDomainSocketConnection)
    if issubclass(connection_class, unix):
        return unix
    return CheckedConnection, AsyncCheckedConnection


def _copied(settings: dict[str, Any]) -> dict[str, Any]:
    return {name: settings[name] for name in COPIED_OPTIONS if settings.get(name) is not None} | {
        name: value for name, value in settings.items() if name.startswith("ssl_")
    }


def _address_of(client: Any) -> Address:
    settings = client.connection_pool.connection_kwargs
    return (str(settings.get("host", "localhost")), int(settings.get("port", 26379)))


def _described(scheme: str, addresses: list[Address], path: str) -> str:
    hosts = ",".join(f"{host}:{port}" for host, port in addresses)
    return redact_url(f"{scheme}://{hosts}{path}")
