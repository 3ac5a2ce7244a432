"""From where Redis is to connections: one resolver for URLs (a node, TLS, a unix socket,
Sentinel, Cluster) and for clients or pools the user built (``target.py``), the routes
of a cluster's commands (``routes.py``), the raw exchanges the hot paths use instead of
redis-py's pipelines (``raw.py``), and the one way to show a URL without passwords."""

from typing import Any

import redis
import redis.asyncio

from .raw import (
    CONNECT_TIMEOUT,
    REDIS_ERRORS,
    NotSentError,
    exchange,
    pack_commands,
    pool_options,
    read_responses,
    read_responses_sync,
    read_within,
    send_commands,
    send_commands_sync,
)
from .routes import AsyncRoutes, Redirect, SyncRoutes, command_key, redirect_of, slot_of
from .target import RedisTarget, resolve
from .urls import (
    DEFAULT_URL,
    URL_ENVIRONMENT_VARIABLES,
    Address,
    Location,
    check_url,
    default_url,
    parse_location,
    redact_url,
)


def sync_pool(url: str, *, max_connections: int, **options: Any) -> redis.ConnectionPool:
    """A connection pool for a ``redis://``, ``rediss://``, ``unix://`` or Sentinel URL."""
    return resolve(url).sync_pool(max_connections=max_connections, **options)


def async_pool(url: str, *, max_connections: int, **options: Any) -> redis.asyncio.ConnectionPool:
    """The asyncio twin of :func:`sync_pool`."""
    return resolve(url).async_pool(max_connections=max_connections, **options)


__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_URL",
    "REDIS_ERRORS",
    "URL_ENVIRONMENT_VARIABLES",
    "Address",
    "AsyncRoutes",
    "Location",
    "NotSentError",
    "Redirect",
    "RedisTarget",
    "SyncRoutes",
    "async_pool",
    "check_url",
    "command_key",
    "default_url",
    "exchange",
    "pack_commands",
    "parse_location",
    "pool_options",
    "read_responses",
    "read_responses_sync",
    "read_within",
    "redact_url",
    "redirect_of",
    "resolve",
    "send_commands",
    "send_commands_sync",
    "slot_of",
    "sync_pool",
]
