"""How long a call may run, and cutting it short there.

Every call is bounded, so that no message can hold a worker's slot for ever: by its
time limit (the method's, else the worker's ``--time-limit``; for a request that
carries no deadline, else ``--default-time-limit``), and by its caller's deadline,
whichever comes first. At a time limit the caller gets error -32001; at its deadline
the caller has stopped waiting, so nothing is written, as for a request that expired
in the queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")

# A call is cut short this long after its caller's deadline, not at it: a handler that
# finishes as its caller gives up (a call it made timing out at the same deadline) is
# not cut mid-reply, and nobody is waiting by then.
DEADLINE_GRACE = 1.0
# How often the watch looks for calls past their deadline or default time limit.
WATCH_SECONDS = 0.1


class TimeLimitReached(Exception):
    """A handler ran past its bound (never a TimeoutError raised by the handler)."""


class DeadlinePassed(BaseException):
    """A call cut short at its caller's deadline: nothing is due to anyone. Not an
    Exception, as CancelledError is not, so that no ``except Exception`` on the way
    (jsonrpcserver's among them) makes it an error reply."""


class PastDeadline:
    """The response of a request cut short at its deadline: nothing to write."""

    def __repr__(self) -> str:
        return "PAST_DEADLINE"


PAST_DEADLINE = PastDeadline()


class Bound(NamedTuple):  # made for every call: a tuple is the cheapest to make
    """How long one call may run from now; ``limit`` is the time limit that set it,
    None if the caller's deadline did."""

    seconds: float
    limit: float | None


def call_bound(
    limit: float | None, default_limit: float | None, deadline: float | None, now: float
) -> Bound | None:
    """The bound of a call starting at ``now`` (epoch seconds): ``limit`` (the method's
    or the worker's), else ``default_limit`` if the request carries no deadline, and
    the ``deadline`` (and DEADLINE_GRACE), whichever is sooner; None if none is set."""
    if limit is None and deadline is None:
        limit = default_limit
    if deadline is None:
        return None if limit is None else Bound(limit, limit)
    left = deadline + DEADLINE_GRACE - now
    if limit is not None and limit <= left:
        return Bound(limit, limit)
    return Bound(left, None)


async def within(running: Awaitable[T], seconds: float) -> T:
    """Await a handler in this task for at most ``seconds``; raise TimeLimitReached.

    One timer that cancels the task, rather than a task and a wait of its own per call.
    An async handler is cancelled; a plain function awaited from a thread runs on, but
    its slot is freed and its caller answered.
    """
    task = asyncio.current_task()
    assert task is not None
    cut = False

    def cut_short() -> None:
        nonlocal cut
        cut = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(seconds, cut_short)
    try:
        value = await running
    except asyncio.CancelledError:
        if not cut or _uncancel(task) > 0:
            raise  # cancelled from outside (a stop): that cancel stands
        raise TimeLimitReached from None
    finally:
        timer.cancel()
    if cut:  # the handler would not be cancelled, and returned anyway
        _uncancel(task)
    return value


class Watch:
    """Cuts short the calls of one event loop that are past their bound, looking every
    WATCH_SECONDS: one task for them all, rather than a timer per call. For the bounds
    that need no precision, a deadline's and the default time limit's: most calls end
    long before them, and a tenth of a second late is fine."""

    def __init__(self) -> None:
        self._due: dict[asyncio.Task[Any], float] = {}  # -> time.monotonic()
        self._cut: set[asyncio.Task[Any]] = set()
        self._watching: asyncio.Task[None] | None = None

    def enter(self, seconds: float) -> asyncio.Task[Any]:
        """Watch the current task for ``seconds``; hand it to :meth:`leave` after."""
        task = asyncio.current_task()
        assert task is not None
        self._due[task] = time.monotonic() + seconds
        watching = self._watching
        if watching is None or watching.done() or watching.get_loop() is not task.get_loop():
            self._watching = task.get_loop().create_task(self._watch())
        return task

    def leave(self, task: asyncio.Task[Any]) -> bool:
        """Stop watching ``task``; True if the watch cancelled it (then undone, and a
        cancel from anyone else still stands)."""
        self._due.pop(task, None)
        if task not in self._cut:
            return False
        self._cut.discard(task)
        return _uncancel(task) == 0

    async def _watch(self) -> None:
        while self._due:
            await asyncio.sleep(WATCH_SECONDS)
            now = time.monotonic()
            for task, due in list(self._due.items()):
                if due <= now and task not in self._cut:
                    self._cut.add(task)
                    task.cancel()


def _uncancel(task: asyncio.Task[Any]) -> int:
    """Undo one cancel() of ours (Python 3.11+, where a task counts them); the cancels
    still standing."""
    uncancel = getattr(task, "uncancel", None)
    return int(uncancel()) if uncancel is not None else 0
