"""Writes a receiving thread sends to another node than its own, on a cluster: an
AsyncClient's reply key lies in a slot of its own, usually on another node than the
queue the request came from. Handing such a reply to the event loop costs a thread hop
and a loop pass (about 400 µs of worker CPU a call, measured); written here, on a
connection to that node kept by the thread, it costs one round trip."""

from __future__ import annotations

import contextlib
from typing import Any

import redis

from ..connection import REDIS_ERRORS, Address, read_responses_sync, redirect_of, send_commands_sync
from ..connection.routes import is_busy
from .connections import ReceivingConnections
from .receiving import Command
from .writer import WRITE_READ_TIMEOUT


class WritesElsewhere:
    """One receiving thread's connections to the other nodes it writes to."""

    def __init__(self, connections: ReceivingConnections) -> None:
        self.connections = connections
        self._by_node: dict[Address, redis.Connection] = {}

    def write(self, key: str | bytes, commands: list[Command]) -> list[Any] | None:
        """The responses to ``commands`` (of ``key``'s slot) on ``key``'s node; None if
        they did not come cleanly (a lost node, a redirection, a busy slot): then the
        event loop's writer, which retries and follows redirections, takes over."""
        address = self.connections.owner(key if isinstance(key, str) else key.decode())
        if address is None:
            return None
        connection = self._by_node.get(address)
        if connection is None:
            connection = self._by_node[address] = self.connections.new_sync(at=address)
        try:
            send_commands_sync(connection, commands)
            results = read_responses_sync(connection, len(commands), WRITE_READ_TIMEOUT)
        except REDIS_ERRORS:
            self._drop(address)
            return None
        if any(redirect_of(result) or is_busy(result) for result in results):
            return None
        return results

    def _drop(self, address: Address) -> None:
        connection = self._by_node.pop(address, None)
        if connection is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                connection.disconnect()  # type: ignore[no-untyped-call]

    def close(self) -> None:
        for address in list(self._by_node):
            self._drop(address)
