"""bounds.py: how long a call may run, and cutting it short there."""

from __future__ import annotations

import asyncio

import pytest

from rpc_redis.worker.bounds import (
    DEADLINE_GRACE,
    Bound,
    TimeLimitReached,
    Watch,
    call_bound,
    within,
)

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("limit", "default", "deadline", "bound"),
    [
        (None, None, None, None),  # unbounded only by choice
        (None, 60.0, None, Bound(60.0, 60.0)),  # no deadline: the default time limit
        (5.0, 60.0, None, Bound(5.0, 5.0)),  # the method's own limit replaces the default
        (None, 60.0, NOW + 10, Bound(10 + DEADLINE_GRACE, None)),  # a deadline: no default
        (5.0, 60.0, NOW + 10, Bound(5.0, 5.0)),  # the sooner of the two
        (30.0, None, NOW + 10, Bound(10 + DEADLINE_GRACE, None)),
        (None, None, NOW - 5, Bound(DEADLINE_GRACE - 5, None)),  # passed: nothing left
    ],
)
def test_the_bound_of_a_call(
    limit: float | None, default: float | None, deadline: float | None, bound: Bound | None
) -> None:
    assert call_bound(limit, default, deadline, NOW) == bound


async def test_within_returns_what_finishes_in_time_and_cuts_what_does_not() -> None:
    assert await within(asyncio.sleep(0, "done"), 1.0) == "done"
    with pytest.raises(TimeLimitReached):
        await within(asyncio.sleep(10), 0.01)
    # The task goes on, neither cancelled nor cancelling.
    task = asyncio.current_task()
    assert task is not None and not task.cancelled()
    if hasattr(task, "cancelling"):
        assert task.cancelling() == 0
    await asyncio.sleep(0.02)  # no stray cancel arrives later


async def test_a_cancel_from_outside_is_not_taken_for_the_time_limit() -> None:
    inner = asyncio.ensure_future(within(asyncio.sleep(10), 5.0))
    await asyncio.sleep(0)
    inner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await inner


async def test_a_handler_that_will_not_be_cancelled_still_returns_its_value() -> None:
    async def stubborn() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "finished anyway"
        return "never"

    assert await within(stubborn(), 0.01) == "finished anyway"
    task = asyncio.current_task()
    if task is not None and hasattr(task, "cancelling"):
        assert task.cancelling() == 0


async def test_the_watch_cuts_short_what_runs_past_its_bound_and_nothing_else() -> None:
    watch = Watch()

    async def watched(seconds: float, sleeping: float) -> str:
        task = watch.enter(seconds)
        cut = False
        try:
            await asyncio.sleep(sleeping)
        except asyncio.CancelledError:
            cut = True
        finally:
            left_cut = watch.leave(task)
        assert left_cut is cut
        return "cut" if cut else "finished"

    results = await asyncio.gather(watched(0.05, 10), watched(10, 0.01), watched(0.05, 0))
    assert results == ["cut", "finished", "finished"]
