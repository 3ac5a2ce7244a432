"""The few raw exchanges the hot paths use instead of redis-py's pipelines: commands
sent in one write on one connection, every response read back in time, error replies
as values in their place."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import hiredis
import redis
import redis.asyncio
import redis.connection

if sys.version_info >= (3, 11, 3):
    from asyncio import timeout as async_timeout
else:  # as redis-py does
    from async_timeout import timeout as async_timeout  # type: ignore[no-redef,import-not-found]

try:
    from redis.maint_notifications import MaintNotificationsConfig
except ImportError:  # redis-py before 7
    MaintNotificationsConfig = None  # type: ignore[assignment,misc]

CONNECT_TIMEOUT = 5.0
# What a lost or unreachable Redis raises; an error reply (ResponseError) is not one.
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class NotSentError(redis.exceptions.ConnectionError):
    """Redis could not be reached before anything was sent (its cause says why): sending
    the same commands again cannot run them twice."""


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
        if not connection.is_connected:
            # connect(), not send_packed_command's own connecting: only connect() asks
            # Sentinel where the primary is now (redis-py 8 skips it there).
            await connection.connect()  # type: ignore[no-untyped-call]
        await connection.send_packed_command(packed)
    except redis.exceptions.ConnectionError:
        # A pooled connection that went stale since its last use: nothing was
        # delivered, so one fresh connection may carry the same commands.
        await connection.disconnect()
        await connection.connect()  # type: ignore[no-untyped-call]
        await connection.send_packed_command(packed)


def pack_commands(
    connection: redis.asyncio.Connection | redis.Connection, commands: list[tuple[Any, ...]]
) -> bytes | list[bytes]:
    """The commands in Redis's protocol, for either twin's connection. hiredis packs
    them in C, where redis-py's asyncio connection packs in Python at six times the
    cost, and its sync one wraps hiredis in enough Python to cost four times as much
    (13 µs against 3.6 for a lane's XACK and XREADGROUP); a connection with another
    encoding than UTF-8 keeps its own packing."""
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
    packed = pack_commands(connection, commands)
    if isinstance(packed, bytes):
        packed = [packed]  # the sync send_packed_command takes chunks: bytes would be ints
    try:
        if connection._sock is None:  # connect() asks Sentinel: see send_commands
            connection.connect()  # type: ignore[no-untyped-call]
        connection.send_packed_command(packed)  # type: ignore[no-untyped-call]
    except redis.exceptions.ConnectionError:
        # A pooled connection that went stale since its last use: nothing was
        # delivered, so one fresh connection may carry the same commands.
        connection.disconnect()  # type: ignore[no-untyped-call]
        connection.connect()  # type: ignore[no-untyped-call]
        connection.send_packed_command(packed)  # type: ignore[no-untyped-call]


def read_responses_sync(
    connection: redis.Connection, count: int, read_timeout: float | None
) -> list[Any]:
    """The sync twin of :func:`read_responses`. ``read_timeout`` None reads within the
    connection's own socket timeout: redis-py sets a timeout given per read on the
    socket and back around every recv, two system calls a read."""
    options = {} if read_timeout is None else {"timeout": read_timeout}
    responses: list[Any] = []
    for _ in range(count):
        try:
            responses.append(connection.read_response(**options))
        except redis.exceptions.ResponseError as error:
            responses.append(error)
    return responses


def read_within(connection: redis.Connection, deadline: float, grace: float) -> None:
    """Bound the next step on ``connection`` (a send, a ``read_responses_sync`` with no
    timeout of its own) by its socket's timeout: the time left to ``deadline`` (on
    ``time.monotonic``, at least a millisecond) and half a grace to a whole one (for a
    reply Redis sends as its own timeout ends). It is set, to the time left and three
    quarters of the grace, only when it lies outside: redis-py's timeout per read sets
    it and back at every read, two system calls, where calls with the same timeout one
    after another need none."""
    sock = connection._sock
    if sock is None:
        return
    seconds = max(deadline - time.monotonic(), 0.001)
    current = sock.gettimeout()
    if current is None or not seconds + grace / 2 <= current <= seconds + grace:
        sock.settimeout(seconds + grace * 0.75)


def pool_options(options: dict[str, Any]) -> dict[str, Any]:
    options.setdefault("socket_connect_timeout", CONNECT_TIMEOUT)
    if MaintNotificationsConfig is not None:
        # With redis-py's maintenance notifications on (its default, "auto"), a pool
        # hands out a connection without checking it is still open, so the first call
        # after a Redis restart fails. Redis before 8 and Valkey do not send them anyway.
        options.setdefault("maint_notifications_config", MaintNotificationsConfig(enabled=False))
    return options
