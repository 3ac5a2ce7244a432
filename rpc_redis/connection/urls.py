"""Where Redis is, as a URL says it: one reading of every form the library accepts, and
the one way to show a URL without its passwords.

    redis://[user:password@]host:port[/db]           one node (``rediss://``: TLS)
    unix:///path/to/redis.sock[?db=0]                one node, on a unix socket
    redis+sentinel://[user:password@]host:port[,host:port...]/MASTER_NAME[/db]
    redis+cluster://[user:password@]host:port[,host:port...]

In the two multi-host forms the credentials are the data nodes'; a Sentinel's own are
query parameters (``?sentinel_password=...``, ``sentinel_username``). Other query
parameters are redis-py's (``socket_timeout``, ``ssl_ca_certs``...), for every data node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

import redis.connection

from ..errors import RpcConfigurationError

DEFAULT_URL = "redis://localhost:6379/0"
URL_ENVIRONMENT_VARIABLES = ("RPC_REDIS_URL", "REDIS_URL")
NODE_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
# Query parameters that are the sentinels' own, not the data nodes'.
SENTINEL_PARAMETERS = ("sentinel_password", "sentinel_username")
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379

Address = tuple[str, int]


def default_url() -> str:
    """The Redis URL from ``RPC_REDIS_URL``, then ``REDIS_URL``, then localhost."""
    for name in URL_ENVIRONMENT_VARIABLES:
        value = os.environ.get(name)
        if value:
            return value
    return DEFAULT_URL


def redact_url(url: str) -> str:
    """The URL with every password in it replaced by ``***``, fit for a log line, an
    exception or a status output: the one in its user part (``redis://user:pw@host``)
    and any query parameter naming one (``?password=pw``, ``?sentinel_password=pw``),
    as the way a ``unix://`` socket authenticates. Works on URLs that ``urlsplit``
    cannot take apart (several hosts, a bad port)."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    # The last "@" before the query ends the credentials, even when an unencoded
    # password holds a "/" or an "@".
    query_at = rest.find("?")
    at = rest.rfind("@", 0, len(rest) if query_at < 0 else query_at)
    credentials, tail = (rest[:at], rest[at:]) if at >= 0 else ("", rest)
    if ":" in credentials:
        credentials = credentials.split(":", 1)[0] + ":***"
    netloc_and_path = credentials + tail
    path, question, query = netloc_and_path.partition("?")
    if question:
        netloc_and_path = f"{path}?" + "&".join(map(_redacted_parameter, query.split("&")))
    return f"{scheme}://{netloc_and_path}"


def _redacted_parameter(item: str) -> str:
    name, equals, _ = item.partition("=")
    return f"{name}=***" if equals and "password" in name.lower() else item


@dataclass(frozen=True)
class Location:
    """What a URL says: the kind of deployment (``node``, ``sentinel``, ``cluster``),
    the addresses to start from (sentinels, or a cluster's seed nodes), the primary's
    name under Sentinel, and redis-py's connection options for the data nodes and for
    the sentinels. A ``node`` URL is redis-py's own, handed to it whole."""

    kind: str
    url: str
    addresses: tuple[Address, ...] = ()
    service_name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    sentinel_options: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return redact_url(self.url)


def parse_location(url: str) -> Location:
    """Read a URL of any accepted form; RpcConfigurationError, naming it redacted, if it
    cannot be read: a malformed URL is a mistake to fix, not an outage to wait out."""
    scheme = url.partition("://")[0].lower()
    try:
        if scheme in NODE_SCHEMES:
            redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
            return Location("node", url)
        if scheme == SENTINEL_SCHEME:
            return _multi_host(url, "sentinel")
        if scheme == CLUSTER_SCHEME:
            return _multi_host(url, "cluster")
    except ValueError as exc:
        raise RpcConfigurationError(f"bad Redis URL {redact_url(url)}: {exc}") from None
    schemes = ", ".join(f"{name}://" for name in (*NODE_SCHEMES, SENTINEL_SCHEME, CLUSTER_SCHEME))
    raise RpcConfigurationError(
        f"bad Redis URL {redact_url(url)}: the scheme must be one of {schemes}"
    )


def check_url(url: str) -> str:
    """The URL, if it can be read (see :func:`parse_location`)."""
    parse_location(url)
    return url


def _multi_host(url: str, kind: str) -> Location:
    """``scheme://[user:password@]host:port,host:port/PATH?QUERY``, read without
    ``urlsplit`` (which takes one host), the options by redis-py's own reading."""
    rest = url.partition("://")[2]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    if not at:
        credentials, hosts = "", netloc
    default_port = DEFAULT_SENTINEL_PORT if kind == "sentinel" else DEFAULT_PORT
    addresses = tuple(_address(host, default_port) for host in hosts.split(",") if host)
    if not addresses:
        raise ValueError("no host:port given")
    parameters = parse_qsl(query, keep_blank_values=True)
    sentinel_options = {
        name.removeprefix("sentinel_"): unquote(value)
        for name, value in parameters
        if name in SENTINEL_PARAMETERS
    }
    node_query = urlencode([(n, v) for n, v in parameters if n not in SENTINEL_PARAMETERS])
    segments = [segment for segment in path.split("/") if segment]
    service_name = None
    if kind == "sentinel":
        if not segments:
            raise ValueError("name the primary: redis+sentinel://host:port/MASTER_NAME[/db]")
        service_name, segments = unquote(segments[0]), segments[1:]
    if len(segments) > 1:
        raise ValueError(f"unexpected path /{path}")
    database = segments[0] if segments else "0"
    if kind == "cluster" and database != "0":
        raise ValueError("a Redis Cluster has only database 0")
    surrogate = f"redis://{credentials}{'@' if credentials else ''}localhost/{database}"
    options = redis.connection.parse_url(  # type: ignore[no-untyped-call]
        surrogate + (f"?{node_query}" if node_query else "")
    )
    for name in ("host", "port", "connection_class"):
        options.pop(name, None)
    if kind == "cluster":
        options.pop("db", None)
    return Location(kind, url, addresses, service_name, options, sentinel_options)


def _address(text: str, default_port: int) -> Address:
    host, colon, port = text.rpartition(":")
    if not colon:
        return (text, default_port)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {text!r}")
    return (host.strip("[]"), int(port))
