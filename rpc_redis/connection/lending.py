"""Lending a pool's connections to exchanges, for less than the pool itself lends them.

redis-py 8's ``ConnectionPool`` spends more on lending a connection and taking it back
than hiredis spends on the command sent on it: a lock each way, two process-id checks
(each a ``getpid`` system call), four metrics records and an event; the asyncio pool
awaits a lock each way and the records. Our exchanges need little of that. They read
every response before they give a connection back, and close one left half-read, so a
lender keeps the connections it took from its pool on a stack of its own, and checks at
each lend what can change while a connection waits there, as the pool checks:

- that Redis has not closed it, nor sent on it unasked (buffered bytes, the end of the
  stream: it starts afresh);
- under Sentinel, that it still goes to the primary the pool last found (a failover
  found by another connection's reconnect moves every kept one);
- that redis-py has not marked it to reconnect (maintenance notifications).

The pool stays the owner: it made the connections, its ``max_connections`` bounds them,
its ``disconnect()`` closes them, and ``give_all_back`` returns them. A forked child
starts with empty stacks, as the pool starts it with no connections. A lender that does
not keep (for a pool the user gave, which their own code may share) lends through the
pool each time, and gives each connection back at once.
"""

from __future__ import annotations

import os
import weakref
from collections import deque
from typing import Any

import redis
import redis.asyncio

from .raw import REDIS_ERRORS


def still_usable(pool: Any, connection: Any) -> bool:
    """Whether a kept connection may carry the next exchange as it is: it goes where the
    pool now sends its connections (a Sentinel pool's primary), and redis-py has not
    marked it to reconnect. Its socket is checked apart, in each twin's own way."""
    if connection.should_reconnect():
        return False
    if not getattr(pool, "is_master", False):
        return True
    primary = getattr(pool, "master_address", None)
    return primary is None or primary == (connection.host, connection.port)


class Lender:
    """The connections of one sync pool, lent one at a time, from any thread."""

    def __init__(self, pool: redis.ConnectionPool, *, keeps: bool = True) -> None:
        self.pool = pool
        self.keeps = keeps  # False: through the pool each time
        self._idle: deque[redis.Connection] = deque()  # append and pop: safe across threads
        _LENDERS.add(self)

    def lend(self) -> redis.Connection:
        """A connected connection (raising as the pool does when none can be made): the
        last given back, if still usable, else a new one from the pool."""
        try:
            connection = self._idle.pop()
        except IndexError:
            return self.pool.get_connection()
        try:
            stale = connection._sock is not None and (
                connection.can_read() or not still_usable(self.pool, connection)
            )
        except REDIS_ERRORS:  # the end of a connection Redis closed
            stale = True
        if stale:
            connection.disconnect()  # type: ignore[no-untyped-call]
        if connection._sock is None:  # connect() costs a retry wrapper even when connected
            try:
                connection.connect()  # type: ignore[no-untyped-call]
            except REDIS_ERRORS:
                self._idle.append(connection)  # unconnected: the next lend connects it
                raise
        return connection

    def give_back(self, connection: redis.Connection) -> None:
        """After an exchange read to its end, or disconnected."""
        if not self.keeps:
            sock = connection._sock
            if sock is not None:  # the pool's own timeout, for its other users
                sock.settimeout(connection.socket_timeout)
            self.pool.release(connection)
        else:
            self._idle.append(connection)

    def give_all_back(self) -> None:
        """Return every kept connection to the pool."""
        while True:
            try:
                connection = self._idle.pop()
            except IndexError:
                return
            self.pool.release(connection)

    def forget_after_fork(self) -> None:
        self._idle.clear()  # the parent's sockets: the pool, reset in the child, forgets them


class AsyncLender:
    """The asyncio twin of :class:`Lender`. Only tasks of one event loop lend from it
    (as from its pool); no await comes between taking a connection and using it."""

    def __init__(self, pool: redis.asyncio.ConnectionPool, *, keeps: bool = True) -> None:
        self.pool = pool
        self.keeps = keeps
        self._idle: deque[redis.asyncio.Connection] = deque()
        _LENDERS.add(self)

    async def lend(self) -> redis.asyncio.Connection:
        try:
            connection = self._idle.pop()
        except IndexError:
            return await self.pool.get_connection()  # type: ignore[no-any-return,no-untyped-call]
        if connection.is_connected:
            try:
                # Buffered bytes or the end of the stream, without a read.
                stale = await connection.can_read() or not still_usable(self.pool, connection)
            except REDIS_ERRORS:
                stale = True
            if stale:
                await connection.disconnect(nowait=True)
        if not connection.is_connected:
            try:
                await connection.connect()  # type: ignore[no-untyped-call]
            except BaseException:
                self._idle.append(connection)  # unconnected: the next lend connects it
                raise
        return connection

    async def give_back(self, connection: redis.asyncio.Connection) -> None:
        if self.keeps:
            self._idle.append(connection)
        else:
            await self.pool.release(connection)

    async def give_all_back(self) -> None:
        while self._idle:
            await self.pool.release(self._idle.pop())

    def forget_after_fork(self) -> None:
        self._idle.clear()


_LENDERS: weakref.WeakSet[Lender | AsyncLender] = weakref.WeakSet()


def _forget_all_after_fork() -> None:
    for lender in list(_LENDERS):
        lender.forget_after_fork()


os.register_at_fork(after_in_child=_forget_all_after_fork)
