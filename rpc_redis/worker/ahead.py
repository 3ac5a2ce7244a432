"""Requests taken ahead: taken off a queue in a burst beyond a lane's own, for the first
lane free, and given back to the head of their queue if none is free in time.

An LPOP rides behind each lane's BLPOP with the room :meth:`TakenAhead.reserve` grants:
up to ``prefetch`` per LPOP, while the lanes hold fewer than ``prefetch`` each. Given
back with LPUSH, in their order, a request is taken at once by any free lane or worker.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.exceptions

from ..connection import REDIS_ERRORS, AsyncRoutes, read_responses, send_commands
from .handling import WorkerStats
from .receiving import raise_first_error
from .writer import WRITE_READ_TIMEOUT

logger = logging.getLogger("rpc_redis.worker")

# While the queue is quiet, how often an LPOP looks for requests waiting.
PROBE_SECONDS = 0.01


@dataclass(frozen=True, slots=True)
class Unstarted:
    """A request a lane took beyond its own, for the first lane free."""

    queue: str
    raw: bytes
    taken_at: float  # time.monotonic()


class TakenAhead:
    """The requests the lanes took ahead, shared by them; thread-safe."""

    def __init__(
        self,
        prefetch: int,
        lanes: int,
        routes: AsyncRoutes,
        stats: WorkerStats,
        on_taken: Callable[[], None],
    ) -> None:
        """``routes``: the worker's, for giving requests back; ``on_taken``: called from
        a lane when it adds requests, to have them watched."""
        self.prefetch = prefetch
        self.lanes = lanes
        self.routes = routes
        self.stats = stats
        self.on_taken = on_taken
        self.unstarted: collections.deque[Unstarted] = collections.deque()
        self._reserved = 0  # room promised to LPOPs on their way
        self._queue_busy = False  # the last LPOP brought requests
        self._probed_at = 0.0
        self._room_lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.unstarted)

    def take(self) -> Unstarted | None:
        """The oldest request taken ahead, if any."""
        try:
            return self.unstarted.popleft()
        except IndexError:
            return None

    def reserve(self) -> int:
        """Room for requests taken ahead, promised to one LPOP (see :meth:`add`): up to
        ``prefetch``, while the lanes hold fewer than ``prefetch`` each.

        While the last LPOP found the queue empty, only one LPOP every PROBE_SECONDS
        looks again: one per call would cost a calm stream of calls a few per cent.
        """
        with self._room_lock:
            if not self._queue_busy:
                now = time.monotonic()
                if now - self._probed_at < PROBE_SECONDS:
                    return 0
                self._probed_at = now
            held = len(self.unstarted) + self._reserved
            room = max(0, min(self.prefetch, self.prefetch * self.lanes - held))
            self._reserved += room
            return room

    def add(self, reserved: int, queue: str, raws: list[bytes]) -> None:
        """What an LPOP given ``reserved`` room brought (possibly nothing)."""
        now = time.monotonic()
        with self._room_lock:
            self._reserved -= reserved
            self.unstarted.extend(Unstarted(queue, raw, now) for raw in raws)
            if reserved:
                self._queue_busy = bool(raws)
        if raws:
            self.stats.add("taken_ahead", len(raws))
            self.on_taken()

    async def give_back(self, taken_before: float) -> None:
        """Push requests unstarted since ``taken_before`` back to the head of their queue,
        in their order: the oldest run of one queue, in one LPUSH."""
        stale: list[Unstarted] = []
        with contextlib.suppress(IndexError):  # the lanes may empty the list meanwhile
            while self.unstarted[0].taken_at <= taken_before and (
                not stale or self.unstarted[0].queue == stale[0].queue
            ):
                stale.append(self.unstarted.popleft())
        if not stale:
            return
        queue = stale[0].queue
        pushing = [request.raw for request in reversed(stale)]
        delivered = False
        pool = self.routes.pool_for(queue)
        try:
            connection = await pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                await send_commands(connection, [("LPUSH", queue, *pushing)])
                delivered = True
                [pushed] = await read_responses(connection, 1, WRITE_READ_TIMEOUT)
            finally:
                await pool.release(connection)
            raise_first_error([pushed])  # refused (a key of another type): not done
        except (*REDIS_ERRORS, redis.exceptions.ResponseError) as exc:
            if delivered and not isinstance(exc, redis.exceptions.ResponseError):
                # Perhaps done: serving them as well could run a call twice.
                logger.error(
                    "gave %d unstarted request(s) back to %s, unconfirmed (%s): they may be lost",
                    len(stale),
                    queue,
                    exc,
                )
            else:  # not done: the lanes serve them after all
                self.unstarted.extendleft(reversed(stale))
            return
        self.stats.add("given_back", len(stale))
        logger.debug("gave %d unstarted request(s) back to %s", len(stale), queue)
