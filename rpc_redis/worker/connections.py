"""The receiving connections: one per receiver, named, so that a stopping worker can
cut their blocking pops short with CLIENT UNBLOCK, and no popped request is dropped (and
close its subscribed ones, which no UNBLOCK reaches)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

import redis
import redis.asyncio
import redis.retry
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..connection import REDIS_ERRORS, async_pool, sync_pool

# How often a stopping worker cuts short the blocking pops it finds.
UNBLOCK_INTERVAL = 0.05


class ReceivingConnections:
    """Makes a worker's receiving connections and, at stop, unblocks them."""

    def __init__(self, url: str, name: str, admin_timeout: float) -> None:
        self.url = url
        self.name = name  # every receiving connection's CLIENT SETNAME
        self.admin_timeout = admin_timeout

    def new(self) -> redis.asyncio.Connection:
        """A connection of its own, not yet connected: its first BLPOP connects it, inside
        the receive loop, which rides out an unreachable Redis."""
        connection: redis.asyncio.Connection = async_pool(
            self.url,
            max_connections=1,
            # No socket timeout: it would wrap every send in a task (redis-py); every
            # read here passes its own timeout instead.
            socket_timeout=None,
            client_name=self.name,
            retry=Retry(NoBackoff(), 0),
        ).make_connection()  # type: ignore[no-untyped-call]
        return connection

    def new_sync(
        self, protocol: int | None = None, socket_timeout: float | None = None
    ) -> redis.Connection:
        """A receiving thread's connection: the sync twin of :meth:`new`. ``protocol``
        2 for RESP2, whose subscribed messages and stream entries are plain arrays:
        cheaper to read than RESP3's push messages and maps; ``socket_timeout`` for one
        that reads within it, rather than passing a timeout to each read."""
        options = {} if protocol is None else {"protocol": protocol}
        connection = sync_pool(
            self.url,
            max_connections=1,
            socket_timeout=socket_timeout,
            client_name=self.name,
            retry=redis.retry.Retry(NoBackoff(), 0),
            **options,
        ).make_connection()
        return cast(redis.Connection, connection)

    async def unblock_until(self, client: redis.asyncio.Redis, done: asyncio.Event) -> None:
        """CLIENT UNBLOCK every receiving connection until ``done`` (the receivers have
        all returned). An unblocked BLPOP returns nil, so no popped message is
        abandoned; repeating covers a BLPOP sent just after its loop looked for a stop."""
        while not done.is_set():
            try:
                await asyncio.wait_for(self._unblock_once(client), self.admin_timeout)
            except (*REDIS_ERRORS, asyncio.TimeoutError):
                pass  # each BLPOP returns by itself within its block
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), UNBLOCK_INTERVAL)

    async def _unblock_once(self, client: redis.asyncio.Redis) -> None:
        for entry in await client.client_list():
            if entry.get("name") != self.name:
                continue
            if int(entry.get("sub") or 0) or int(entry.get("psub") or 0):
                # A subscribed connection is not blocked, only waiting: closing it ends
                # its read (pub/sub loses nothing it would not lose anyway at a stop).
                await client.client_kill_filter(_id=entry["id"])
            else:
                await client.client_unblock(int(entry["id"]))
