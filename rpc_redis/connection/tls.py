"""TLS connections that say so when the server speaks plaintext.

A ``rediss://`` URL pointed at a plaintext port makes the handshake wait for an answer
that never comes; redis-py then reports a timeout, and a call "no reply from service".
These connections look, once the handshake has failed, whether the port answers a
plaintext PING, and if it does raise :class:`~rpc_redis.errors.TlsMismatchError`: a
configuration error, one line, not an outage to wait out.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

import redis
import redis.asyncio

from ..errors import TlsMismatchError

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
