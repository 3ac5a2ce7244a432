"""Connections that say so when TLS is asked for and the server speaks plaintext, or the
other way round.

A ``rediss://`` URL pointed at a plaintext port makes the handshake wait for an answer
that never comes; redis-py then reports a timeout, and a call "no reply from service".
A ``redis://`` URL pointed at a TLS port has its first command dropped with the
connection: an outage, to a worker waiting for ever. Once such a connection has
failed, these look at the port (a plaintext PING, or a TLS handshake) and, if it speaks
the other way, raise :class:`~rpc_redis.errors.TlsMismatchError`: a configuration
error, one line, not an outage to wait out.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

import redis
import redis.asyncio
import redis.exceptions

from ..errors import RedisFailure, TlsMismatchError, classify_redis_error

PROBE_TIMEOUT = 1.0
HANDSHAKE_FAILURES = (socket.timeout, TimeoutError, asyncio.TimeoutError, ssl.SSLError)


def answers_in_plaintext(host: str, port: int) -> bool:
    """Whether a Redis answers a plaintext PING on ``host:port`` (``+PONG``, or an error
    reply such as ``-NOAUTH``)."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply[:1] in (b"+", b"-")


def speaks_tls(host: str, port: int) -> bool:
    """Whether a TLS handshake (certificates unchecked: this only asks) completes there."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as sock:
            with context.wrap_socket(sock, server_hostname=host):
                return True
    except (OSError, ssl.SSLError):
        return False


def dropped(error: BaseException) -> bool:
    """A connection lost as its first command went out: not a refused password."""
    return classify_redis_error(error) is RedisFailure.OUTAGE


def plaintext_to_tls(host: str, port: int) -> TlsMismatchError:
    return TlsMismatchError(
        f"{host}:{port} speaks TLS, and this connection plaintext: use rediss:// for it"
    )


def mismatch(host: str, port: int) -> TlsMismatchError:
    return TlsMismatchError(
        f"{host}:{port} answers in plaintext, not TLS: use redis:// for it, or the port "
        "where Redis (or its TLS proxy) speaks TLS"
    )


class CheckedSSLConnection(redis.SSLConnection):
    """redis-py's TLS connection, telling a plaintext server from a slow one, and giving
    its handshake the connect timeout (redis-py gives it the socket timeout, which a
    receiving connection does not have)."""

    def _wrap_socket_with_ssl(self, sock: socket.socket) -> Any:
        sock.settimeout(self.socket_connect_timeout)
        wrapped = super()._wrap_socket_with_ssl(sock)  # type: ignore[no-untyped-call]
        wrapped.settimeout(self.socket_timeout)
        return wrapped

    def _connect(self) -> Any:
        try:
            return super()._connect()  # type: ignore[no-untyped-call]
        except HANDSHAKE_FAILURES as exc:
            if answers_in_plaintext(self.host, self.port):
                raise mismatch(self.host, self.port) from exc
            raise


class AsyncCheckedSSLConnection(redis.asyncio.SSLConnection):
    """The asyncio twin of :class:`CheckedSSLConnection`."""

    async def _connect(self) -> None:
        try:
            await super()._connect()  # type: ignore[no-untyped-call]
        except HANDSHAKE_FAILURES as exc:
            if await asyncio.to_thread(answers_in_plaintext, self.host, self.port):
                raise mismatch(self.host, self.port) from exc
            raise


class CheckedConnection(redis.Connection):
    """redis-py's plaintext connection, telling a TLS port from a lost connection."""

    def on_connect_check_health(self, check_health: bool = True) -> None:
        try:
            super().on_connect_check_health(check_health)
        except redis.exceptions.ConnectionError as exc:
            if dropped(exc) and speaks_tls(self.host, self.port):
                raise plaintext_to_tls(self.host, self.port) from exc
            raise


class AsyncCheckedConnection(redis.asyncio.Connection):
    """The asyncio twin of :class:`CheckedConnection`."""

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        try:
            await super().on_connect_check_health(check_health)
        except redis.exceptions.ConnectionError as exc:
            if dropped(exc) and await asyncio.to_thread(speaks_tls, self.host, self.port):
                raise plaintext_to_tls(self.host, self.port) from exc
            raise
