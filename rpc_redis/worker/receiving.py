"""The rules of receiving, for both ways a worker receives (threads in ``lanes.py``, the
event loop in ``loop.py``): which commands take requests, what their answers mean, what
a failure calls for, how a write is retried through an outage. No I/O here: each twin
is a thin loop over these functions, so the two cannot drift apart.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis.exceptions

from ..connection import redirect_of
from ..errors import RedisFailure, classify_redis_error

Command = tuple[Any, ...]

# How long past its block a receiving read may wait before the connection is taken for lost.
READ_GRACE_SECONDS = 5.0
# How long a worker keeps trying to write an outcome through a Redis outage (or until
# the request's deadline, if sooner).
WRITE_RETRY_SECONDS = 30.0
FIRST_WRITE_RETRY_DELAY = 0.05
LAST_WRITE_RETRY_DELAY = 1.0
# How long a receiver waits before popping again from a queue Redis refused to pop.
REFUSAL_PAUSE_SECONDS = 1.0
# How long before popping again from a cluster between two states (TRYAGAIN, CLUSTERDOWN).
BUSY_PAUSE_SECONDS = 0.1


def slot_groups(queues: Sequence[str], slot: Callable[[str], int | None]) -> list[list[str]]:
    """The queues one BLPOP can wait on together: all of them on a single node (``slot``
    gives None), those of one hash slot on a cluster (a BLPOP of keys of several slots
    is refused there), in their order. Each group gets receivers of its own, so a busy
    slot cannot starve another."""
    groups: dict[int | None, list[str]] = {}
    for queue in queues:
        groups.setdefault(slot(queue), []).append(queue)
    return list(groups.values())


def rotate(queues: list[str]) -> None:
    """Put the first queue last, in place: BLPOP takes from the first non-empty queue it
    names, so rotating on every pop keeps a busy service from starving the others."""
    if len(queues) > 1:
        queues.append(queues.pop(0))


# Redis leaves a receiver blocked on a node while its slot migrates to another, and
# what clients send meanwhile goes there (ASK): on a cluster, receivers block this long
# at a time at most, so that they come to the new node within it.
CLUSTER_BLOCK_SECONDS = 1.0


def receiving_block(block_seconds: float, is_cluster: bool) -> float:
    """How long a receiver blocks on Redis at a time (see CLUSTER_BLOCK_SECONDS)."""
    return min(block_seconds, CLUSTER_BLOCK_SECONDS) if is_cluster else block_seconds


def receive_commands(queues: Sequence[str], block_seconds: float, take_more: int) -> list[Command]:
    """A BLPOP of every queue and, with ``take_more``, an LPOP of up to that many more
    from the first queue (the one BLPOP looks at first), to send in one write."""
    commands: list[Command] = [("BLPOP", *queues, block_seconds)]
    if take_more:
        commands.append(("LPOP", queues[0], take_more))
    return commands


@dataclass(frozen=True, slots=True)
class Received:
    """What :func:`receive_commands` brought: the BLPOP's request (None if it was cut
    short or timed out) and what the LPOP took from ``more_from``."""

    queue: str | None
    request: bytes | None
    more_from: str
    more: list[bytes] = field(default_factory=list)


class TakenThenFailed(Exception):
    """Requests were taken, and a command after the one that took them failed (an LPOP
    of more redirected as the slot moves...): serve ``requests`` first, then ride out
    ``error``. Raising the error alone would drop requests already off the queue."""

    def __init__(self, queue: str, requests: list[bytes], error: Exception) -> None:
        super().__init__(str(error))
        self.queue = queue
        self.requests = requests
        self.error = error


def raise_unless_taken(queue: str, taken: list[bytes], responses: list[Any]) -> None:
    """Raise the first error reply among responses: alone if nothing was taken, else
    as :class:`TakenThenFailed`, carrying what was."""
    error = next((r for r in responses if isinstance(r, redis.exceptions.ResponseError)), None)
    if error is None:
        return
    if taken:
        raise TakenThenFailed(queue, taken, error)
    raise error


def parse_received(responses: list[Any], queues: Sequence[str], take_more: int) -> Received:
    """The answers to :func:`receive_commands`; raises the first error reply among them
    (a queue key holding a string, a redirection...), as TakenThenFailed if the BLPOP
    took a request all the same."""
    popped = responses[0]
    if isinstance(popped, redis.exceptions.ResponseError):
        raise popped
    more = responses[1] if take_more else []
    if popped is None:
        raise_first_error([more])
        return Received(None, None, queues[0], list(more or []))
    queue, request = cast(tuple[bytes, bytes], popped)
    raise_unless_taken(queue.decode(), [request], [more])
    return Received(queue.decode(), request, queues[0], list(more or []))


def raise_first_error(responses: list[Any]) -> None:
    """Raise the first error reply among responses (a key holding the wrong type...)."""
    for response in responses:
        if isinstance(response, redis.exceptions.ResponseError):
            raise response


class AfterFailure(enum.Enum):
    """What a receiver does when taking requests failed."""

    WAIT_FOR_REDIS = "wait"  # lost or unreachable: wait it out, then receive again
    PAUSE = "pause"  # Redis refused the pop (a queue holding a string): note it, pause
    STOP = "stop"  # a configuration error: retrying cannot help, the worker stops
    REDIRECT = "redirect"  # the queue's slot is on another node (MOVED, ASK): go there
    RETRY_SOON = "retry soon"  # a cluster between two states (TRYAGAIN...): a moment


def after_receive_failure(error: BaseException) -> AfterFailure | None:
    """What a failed receive calls for; None if the error is not Redis's (re-raise it)."""
    if redirect_of(error) is not None:
        return AfterFailure.REDIRECT
    failure = classify_redis_error(error)
    if failure is None:
        return None
    if failure is RedisFailure.OUTAGE and isinstance(error, redis.exceptions.ResponseError):
        return AfterFailure.RETRY_SOON  # it answered: nothing to wait for but a moment
    if failure is RedisFailure.CONFIGURATION:
        return AfterFailure.STOP
    if failure is RedisFailure.REFUSED:
        return AfterFailure.PAUSE
    return AfterFailure.WAIT_FOR_REDIS


def give_up_time(deadline: float | None, now: float | None = None) -> float:
    """When to stop retrying a write: after WRITE_RETRY_SECONDS, or at the caller's
    deadline if sooner, but never less than a second from now."""
    now = time.time() if now is None else now
    give_up_at = now + WRITE_RETRY_SECONDS
    if deadline is not None:
        give_up_at = max(min(give_up_at, deadline), now + 1)
    return give_up_at


class WriteRetry:
    """The schedule for writing one outcome through an outage: exponential from 50 ms
    to 1 s apart, with jitter, until its give-up time."""

    def __init__(self, deadline: float | None) -> None:
        self.give_up_at = give_up_time(deadline)
        self._delay = FIRST_WRITE_RETRY_DELAY

    def next_delay(self, now: float | None = None) -> float | None:
        """Seconds to wait before the next attempt, or None: give up."""
        now = time.time() if now is None else now
        delay = self._delay * random.uniform(0.5, 1.5)
        if now + delay > self.give_up_at:
            return None
        self._delay = min(self._delay * 2, LAST_WRITE_RETRY_DELAY)
        return delay
