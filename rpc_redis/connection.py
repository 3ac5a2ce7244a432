"""From a Redis URL to connections: one place for URLs, defaults and redaction; and
riding out a Redis that went away."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import hiredis
import redis
import redis.asyncio

if sys.version_info >= (3, 11, 3):
    from asyncio import timeout as async_timeout
else:  # as redis-py does
    from async_timeout import timeout as async_timeout  # type: ignore[no-redef,import-not-found]

try:
    from redis.maint_notifications import MaintNotificationsConfig
except ImportError:  # redis-py before 7
    MaintNotificationsConfig = None  # type: ignore[assignment,misc]

DEFAULT_URL = "redis://localhost:6379/0"
URL_ENVIRONMENT_VARIABLES = ("RPC_REDIS_URL", "REDIS_URL")
CONNECT_TIMEOUT = 5.0
RECONNECT_BACKOFF_CAP = 5.0
# What a lost or unreachable Redis raises; an error reply (ResponseError) is not one.
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


logger = logging.getLogger("rpc_redis.worker")  # the lines are the worker's


def default_url() -> str:
    """The Redis URL from ``RPC_REDIS_URL``, then ``REDIS_URL``, then localhost."""
    for name in URL_ENVIRONMENT_VARIABLES:
        value = os.environ.get(name)
        if value:
            return value
    return DEFAULT_URL


def redact_url(url: str) -> str:
    """The URL with any password replaced, fit for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def sync_pool(url: str, *, max_connections: int, **options: Any) -> redis.ConnectionPool:
    """A connection pool for ``redis://``, ``rediss://`` (TLS) and ``unix://`` URLs."""
    return redis.ConnectionPool.from_url(
        url, max_connections=max_connections, **pool_options(options)
    )


def async_pool(url: str, *, max_connections: int, **options: Any) -> redis.asyncio.ConnectionPool:
    """The asyncio twin of :func:`sync_pool`."""
    return redis.asyncio.ConnectionPool.from_url(
        url, max_connections=max_connections, **pool_options(options)
    )


async def exchange(
    connection: redis.asyncio.Connection,
    commands: list[tuple[Any, ...]],
    read_timeout: float | None = None,
) -> list[Any]:
    """Send commands in one write on one connection and read every response.

    An error reply (``WRONGTYPE``...) comes back as a ResponseError in its place, as
    pipelines do with ``raise_on_error=False``, without redis-py's pipeline machinery:
    on the hot path, that machinery costs more than the round trip it organises.
    """
    await send_commands(connection, commands)
    return await read_responses(connection, len(commands), read_timeout)


async def send_commands(
    connection: redis.asyncio.Connection, commands: list[tuple[Any, ...]]
) -> None:
    """Send commands in one write; a stale pooled connection is replaced once."""
    packed = pack_commands(connection, commands)
    try:
        await connection.send_packed_command(packed)
    except redis.exceptions.ConnectionError:
        # A pooled connection that went stale since its last use: nothing was
        # delivered, so one fresh connection may carry the same commands.
        await connection.disconnect()
        await connection.send_packed_command(packed)


def pack_commands(
    connection: redis.asyncio.Connection, commands: list[tuple[Any, ...]]
) -> bytes | list[bytes]:
    """The commands in Redis's protocol. hiredis packs them in C, where redis-py's
    asyncio connection packs in Python at six times the cost (its sync one uses hiredis);
    a connection with another encoding than UTF-8 keeps its own packing."""
    if connection.encoder.encoding.replace("-", "").lower() != "utf8":
        return connection.pack_commands(commands)
    try:
        return b"".join([hiredis.pack_command(command) for command in commands])
    except TypeError as exc:  # a value of a type Redis does not take, as redis-py says it
        raise redis.exceptions.DataError(str(exc)) from exc


async def read_responses(
    connection: redis.asyncio.Connection, count: int, read_timeout: float | None
) -> list[Any]:
    """Read ``count`` responses within ``read_timeout`` in all; error replies come back
    as values, in their place.

    Past the timeout the connection is closed and TimeoutError raised, as in the sync
    twin. (redis-py's own async read with a timeout returns None instead and keeps the
    connection open, so the late response would be read as the next command's.)
    """
    responses: list[Any] = []
    try:
        async with async_timeout(read_timeout):  # one timer for all: they come together
            for _ in range(count):
                try:
                    responses.append(await connection.read_response())
                except redis.exceptions.ResponseError as error:
                    responses.append(error)
    except asyncio.TimeoutError:
        await connection.disconnect()
        raise redis.exceptions.TimeoutError(f"no response from Redis in {read_timeout}s") from None
    return responses


def send_commands_sync(connection: redis.Connection, commands: list[tuple[Any, ...]]) -> None:
    """The sync twin of :func:`send_commands`."""
    packed = connection.pack_commands(commands)  # type: ignore[no-untyped-call]
    try:
        connection.send_packed_command(packed)  # type: ignore[no-untyped-call]
    except redis.exceptions.ConnectionError:
        # A pooled connection that went stale since its last use: nothing was
        # delivered, so one fresh connection may carry the same commands.
        connection.disconnect()  # type: ignore[no-untyped-call]
        connection.send_packed_command(packed)  # type: ignore[no-untyped-call]


def read_responses_sync(
    connection: redis.Connection, count: int, read_timeout: float | None
) -> list[Any]:
    """The sync twin of :func:`read_responses`."""
    responses: list[Any] = []
    for _ in range(count):
        try:
            responses.append(connection.read_response(timeout=read_timeout))
        except redis.exceptions.ResponseError as error:
            responses.append(error)
    return responses


def pool_options(options: dict[str, Any]) -> dict[str, Any]:
    options.setdefault("socket_connect_timeout", CONNECT_TIMEOUT)
    if MaintNotificationsConfig is not None:
        # With redis-py's maintenance notifications on (its default, "auto"), a pool
        # hands out a connection without checking it is still open, so the first call
        # after a Redis restart fails. Redis before 8 and Valkey do not send them anyway.
        options.setdefault("maint_notifications_config", MaintNotificationsConfig(enabled=False))
    return options


class Reconnector:
    """Waits out a lost Redis for every receiver of a worker: pings backing off with
    jitter until Redis answers or a stop is requested, with one log line per outage."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        url: str,
        stop_requested: asyncio.Event,
        ping_timeout: float,
    ) -> None:
        self.client = client
        self.url = url
        self.stop_requested = stop_requested
        self.ping_timeout = ping_timeout
        self._lock = asyncio.Lock()  # several receivers, one outage, one log line

    async def wait(self, first_error: BaseException | None = None) -> bool:
        """True once Redis answers; False if a stop is requested first."""
        async with self._lock:
            return await self._reconnect(first_error)

    async def _reconnect(self, first_error: BaseException | None) -> bool:
        delay = 0.1
        try:
            await asyncio.wait_for(self.client.ping(), self.ping_timeout)
            return True  # never lost, or another receiver already reconnected
        except (*REDIS_ERRORS, asyncio.TimeoutError) as exc:
            error = exc if first_error is None else first_error
        url = redact_url(self.url)
        logger.warning("cannot reach Redis at %s (%s); retrying with backoff", url, error)
        while not await sleep_unless_set(self.stop_requested, delay * random.uniform(0.5, 1.5)):
            delay = min(delay * 2, RECONNECT_BACKOFF_CAP)
            try:
                await asyncio.wait_for(self.client.ping(), self.ping_timeout)
            except (*REDIS_ERRORS, asyncio.TimeoutError):
                continue
            logger.info("connected to Redis at %s", url)
            return True
        return False


async def sleep_unless_set(event: asyncio.Event, seconds: float) -> bool:
    """Sleep, waking early if ``event`` is set; True if it was."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except asyncio.TimeoutError:
        return False
    return True
