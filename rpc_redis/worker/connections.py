"""The receiving connections: one per receiver, named, so that a stopping worker can
cut their blocking pops short with CLIENT UNBLOCK, and no popped request is dropped (and
close its subscribed ones, which no UNBLOCK reaches). On a cluster each goes to the node
serving its queues' (or its stream's) hash slot, and is replaced by one to another node
when a redirection or a failover says so."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

import redis
import redis.asyncio
import redis.retry
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..connection import REDIS_ERRORS, Address, AsyncRoutes, Redirect, RedisTarget, SyncRoutes

# How often a stopping worker cuts short the blocking pops it finds.
UNBLOCK_INTERVAL = 0.05
# The receiving pools only make connections (one per receiver, and one per move to
# another node); they never hand them out, so they set no bound of their own.
UNBOUNDED = 2**31


class ReceivingConnections:
    """Makes a worker's receiving connections and, at stop, unblocks them."""

    def __init__(
        self, target: RedisTarget, routes: AsyncRoutes, name: str, admin_timeout: float
    ) -> None:
        """``routes``: the worker's own, to reach each node while its receivers block."""
        self.routes = routes
        self.name = name  # every receiving connection's CLIENT SETNAME
        self.admin_timeout = admin_timeout
        # No socket timeout: it would wrap every send in a task (redis-py); every read
        # here passes its own timeout instead. No retries: the receive loop has its own.
        self._async = target.async_routes(
            max_connections=UNBOUNDED,
            socket_timeout=None,
            client_name=name,
            retry=Retry(NoBackoff(), 0),
        )
        self._sync = target.sync_routes(
            max_connections=UNBOUNDED,
            socket_timeout=None,
            client_name=name,
            retry=redis.retry.Retry(NoBackoff(), 0),
        )
        self._target = target
        self._events: dict[float | None, SyncRoutes] = {}  # by socket timeout

    @property
    def is_cluster(self) -> bool:
        return self._async.is_cluster

    def owner(self, key: str) -> Address | None:
        """The node that serves ``key`` now (None on a single node)."""
        return self._async.owner(key)

    def new(self, key: str | None = None, at: Address | None = None) -> redis.asyncio.Connection:
        """A connection of its own to ``key``'s node (or to the node ``at``), not yet
        connected: its first BLPOP connects it, inside the receive loop, which rides out
        an unreachable Redis."""
        pool = self._async.pool_at(at) if at is not None else self._async.pool_for(key)
        return cast(redis.asyncio.Connection, pool.make_connection())  # type: ignore[no-untyped-call]

    def new_sync(self, key: str | None = None, at: Address | None = None) -> redis.Connection:
        """A receiving thread's connection: the sync twin of :meth:`new`."""
        pool = self._sync.pool_at(at) if at is not None else self._sync.pool_for(key)
        return cast(redis.Connection, pool.make_connection())

    def new_event_sync(
        self, read_timeout: float | None, key: str | None = None, at: Address | None = None
    ) -> redis.Connection:
        """An event reader's connection (a lane's, the subscriber's), to ``key``'s node:
        RESP2, whose subscribed messages and stream entries are plain arrays, cheaper to
        read than RESP3's pushes and maps; every read within ``read_timeout``, the
        socket's own (a timeout given per read costs two system calls a read)."""
        routes = self._events.get(read_timeout)
        if routes is None:
            routes = self._events[read_timeout] = self._target.sync_routes(
                max_connections=UNBOUNDED,
                socket_timeout=read_timeout,
                client_name=self.name,
                retry=redis.retry.Retry(NoBackoff(), 0),
                protocol=2,
            )
        pool = routes.pool_at(at) if at is not None else routes.pool_for(key)
        return cast(redis.Connection, pool.make_connection())

    def following_event_sync(
        self, redirect: Redirect, key: str, read_timeout: float
    ) -> redis.Connection:
        """An event reader's connection to the node a redirection names."""
        self._sync.follow(redirect, key)
        self._async.follow(redirect, key)
        return self.new_event_sync(read_timeout, at=redirect.address)

    def following(self, redirect: Redirect, key: str) -> redis.asyncio.Connection:
        """A connection to the node a redirection names; a MOVED corrects the slot map."""
        self._async.follow(redirect, key)
        return self.new(at=redirect.address)

    def following_sync(self, redirect: Redirect, key: str) -> redis.Connection:
        """The sync twin of :meth:`following`."""
        self._sync.follow(redirect, key)
        return self.new_sync(at=redirect.address)

    async def disconnect(self) -> None:
        """Close whatever the receiving pools still hold (the receivers close their own)."""
        await self._async.disconnect()
        self._sync.disconnect()
        for routes in self._events.values():
            routes.disconnect()

    async def unblock_until(self, done: asyncio.Event) -> None:
        """CLIENT UNBLOCK every receiving connection until ``done`` (the receivers have
        all returned). An unblocked BLPOP returns nil, so no popped message is
        abandoned; repeating covers a BLPOP sent just after its loop looked for a stop."""
        while not done.is_set():
            try:
                await asyncio.wait_for(self._unblock_once(), self.admin_timeout)
            except (*REDIS_ERRORS, asyncio.TimeoutError):
                pass  # each BLPOP returns by itself within its block
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), UNBLOCK_INTERVAL)

    async def _unblock_once(self) -> None:
        events = [address for routes in self._events.values() for address in routes.addresses()]
        nodes: list[Address | None] = [
            *{*self._async.addresses(), *self._sync.addresses(), *events}
        ]
        for address in nodes or [None]:
            pool = self.routes.pool_at(address) if address else self.routes.pool_for(None)
            timeout = self.admin_timeout
            [listing] = await self.routes.exchange_on(pool, [("CLIENT", "LIST")], timeout)
            mine = [entry for entry in client_list(listing) if entry.get("name") == self.name]
            # A subscribed connection is not blocked, only waiting: closing it ends its
            # read (pub/sub loses nothing it would not lose anyway at a stop).
            subscribed = [entry["id"] for entry in mine if _subscribed(entry)]
            ids = [entry["id"] for entry in mine if not _subscribed(entry)]
            if subscribed:
                await self.routes.exchange_on(
                    pool, [("CLIENT", "KILL", "ID", client_id) for client_id in subscribed],
                    self.admin_timeout,
                )  # fmt: skip
            if ids:
                await self.routes.exchange_on(
                    pool, [("CLIENT", "UNBLOCK", client_id) for client_id in ids],
                    self.admin_timeout,
                )  # fmt: skip


def client_list(listing: Any) -> list[dict[str, str]]:
    """``CLIENT LIST`` as one dict of fields per connection."""
    if isinstance(listing, Exception):
        raise listing
    text = listing.decode() if isinstance(listing, bytes) else str(listing)
    return [
        dict(field.split("=", 1) for field in line.split(" ") if "=" in field)
        for line in text.splitlines()
        if line.strip()
    ]


def _subscribed(entry: dict[str, str]) -> bool:
    return bool(int(entry.get("sub") or 0) or int(entry.get("psub") or 0))
