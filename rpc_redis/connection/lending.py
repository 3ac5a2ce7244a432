"""Lending a pool's connections to the sync Client's exchanges, for less than the pool.

redis-py 8's ``ConnectionPool`` spends more on lending a connection and taking it back
than hiredis spends on the command sent on it: a lock each way, two process-id checks
(each a ``getpid`` system call), four metrics records and an event. The Client needs
little of that. It reads every response before it gives a connection back, and closes
one left half-read, so a :class:`Lender` keeps the connections it took from the pool
on a stack of its own, and checks at each lend only what can change while a connection
waits there: that Redis has not closed it (nor sent on it unasked), as the pool checks.
The pool stays the owner: it made the connections, its ``max_connections`` bounds
them, its ``disconnect()`` closes them, and :meth:`Lender.give_all_back` returns them.
A forked child starts with empty stacks, as the pool starts it with no connections. A
pool the user gave (``Client(redis=...)``) is theirs to share with their own code: its
connections go back to it after each exchange, as before.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque

import redis

from .raw import REDIS_ERRORS


class Lender:
    """The connections of one pool, lent one at a time to whoever asks, and given back."""

    def __init__(self, pool: redis.ConnectionPool, *, keeps: bool = True) -> None:
        self.pool = pool
        self.keeps = keeps  # False: each connection back to the pool, at once
        self._idle: deque[redis.Connection] = deque()  # append and pop: safe across threads
        _LENDERS.add(self)

    def lend(self) -> redis.Connection:
        """A connected connection (raising as the pool does when none can be made): the
        last given back, unless Redis closed it meanwhile, else a new one from the pool."""
        try:
            connection = self._idle.pop()
        except IndexError:
            return self.pool.get_connection()  # what a lender that keeps none always does
        try:
            # Something unasked for, or the end of a connection Redis closed (a restart,
            # its idle timeout, CLIENT KILL): it starts afresh, as the pool would start it.
            stale = connection._sock is not None and connection.can_read()
        except REDIS_ERRORS:
            stale = True
        if stale:
            connection.disconnect()  # type: ignore[no-untyped-call]
        try:
            connection.connect()  # type: ignore[no-untyped-call]  # nothing if connected
        except REDIS_ERRORS:
            self._idle.append(connection)  # unconnected: the next lend connects it
            raise
        return connection

    def give_back(self, connection: redis.Connection) -> None:
        """Back on the stack, for the next lend: read to its end, or disconnected."""
        if self.keeps:
            self._idle.append(connection)
        else:
            self.pool.release(connection)

    def give_all_back(self) -> None:
        """Return every idle connection to the pool (a pool the user shares with us)."""
        while True:
            try:
                connection = self._idle.pop()
            except IndexError:
                return
            self.pool.release(connection)

    def _forget_after_fork(self) -> None:
        self._idle.clear()  # the parent's sockets: the pool, reset in the child, forgets them


class Lenders:
    """A lender for each pool a client's routes use (one, or one per cluster node)."""

    def __init__(self, *, keep: bool = True) -> None:
        self.keep = keep  # whether lenders keep connections from their pools (see Lender)
        self._by_pool: dict[int, Lender] = {}
        self._lock = threading.Lock()

    def __call__(self, pool: redis.ConnectionPool) -> Lender:
        lender = self._by_pool.get(id(pool))
        if lender is None:
            with self._lock:
                lender = self._by_pool.get(id(pool))
                if lender is None:  # the lender holds the pool: its id stays its own
                    lender = self._by_pool[id(pool)] = Lender(pool, keeps=self.keep)
        return lender

    def give_all_back(self) -> None:
        with self._lock:
            lenders = list(self._by_pool.values())
        for lender in lenders:
            lender.give_all_back()


_LENDERS: weakref.WeakSet[Lender] = weakref.WeakSet()


def _forget_all_after_fork() -> None:
    for lender in list(_LENDERS):
        lender._forget_after_fork()


os.register_at_fork(after_in_child=_forget_all_after_fork)
