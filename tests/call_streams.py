"""Calls kept going from a thread while a test breaks Redis under them: every outcome is
recorded with its duration, and a test waits on answers as events, not sleeps."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any

from rpc_redis import AsyncClient, Client, RpcConnectionError, RpcTimeout

# Beyond a call's timeout, what a busy 2-core machine may add before the caller returns.
RETURN_MARGIN = 1.0
# A stream ends by itself after this long, whatever the test does.
STREAM_LIMIT = 60.0


@dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic()
    seconds: float
    expected: Any
    value: Any = None
    error: BaseException | None = None

    @property
    def answered(self) -> bool:
        return self.error is None and self.value == self.expected


class CallStream:
    """``service.echo(n)`` calls one after another (sync), or in gathered bursts (async),
    through one client of ``url``, until :meth:`stop`."""

    def __init__(
        self, url: str, service: str, *, asynchronous: bool, timeout: float, burst: int = 5
    ) -> None:
        self.url = url
        self.service = service
        self.asynchronous = asynchronous
        self.timeout = timeout
        self.burst = burst
        self.outcomes: list[Outcome] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"calls-{service}", daemon=True)

    def start(self) -> CallStream:
        self._thread.start()
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        self._thread.join(self.timeout + STREAM_LIMIT)
        assert not self._thread.is_alive(), "a call outlived its timeout"
        return self.outcomes

    def _record(self, outcome: Outcome) -> None:
        with self._changed:
            self.outcomes.append(outcome)
            self._changed.notify_all()

    def wait_for_answers(self, count: int, since: float = 0.0, timeout: float = 30.0) -> None:
        """Until ``count`` calls started after ``since`` (time.monotonic()) are answered."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(o.answered and o.started >= since for o in self.outcomes) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    failures = [repr(o.error) for o in self.outcomes[-5:] if o.error]
                    raise AssertionError(
                        f"{self.service}: not {count} answers since {since} in {timeout}s; "
                        f"last failures: {failures}"
                    )
                self._changed.wait(min(left, 0.5))

    def _run(self) -> None:
        if self.asynchronous:
            asyncio.run(self._run_async())
            return
        limit = time.monotonic() + STREAM_LIMIT
        with Client(self.url, timeout=self.timeout) as client:
            echo = client.proxy(self.service).echo
            n = 0
            while not self._stop.is_set() and time.monotonic() < limit:
                started = time.monotonic()
                try:
                    value = echo(n)
                    outcome = Outcome(started, time.monotonic() - started, [self.service, n], value)
                except Exception as exc:
                    outcome = Outcome(started, time.monotonic() - started, None, error=exc)
                    self._stop.wait(0.05)  # a Redis just lost: no busy loop of errors
                self._record(outcome)
                n += 1

    async def _run_async(self) -> None:
        limit = time.monotonic() + STREAM_LIMIT
        async with AsyncClient(self.url, timeout=self.timeout) as client:
            echo = client.proxy(self.service).echo
            n = 0
            while not self._stop.is_set() and time.monotonic() < limit:
                started = time.monotonic()
                burst = range(n, n + self.burst)
                results = await asyncio.gather(*(echo(k) for k in burst), return_exceptions=True)
                seconds = time.monotonic() - started
                for k, result in zip(burst, results, strict=True):
                    if isinstance(result, BaseException):
                        self._record(Outcome(started, seconds, None, error=result))
                    else:
                        self._record(Outcome(started, seconds, [self.service, k], result))
                if any(isinstance(result, BaseException) for result in results):
                    await asyncio.sleep(0.05)
                n += self.burst


def assert_answered_or_typed_within_timeout(outcomes: list[Outcome], timeout: float) -> None:
    """Each call got its own answer or a typed error (RpcTimeout, RpcConnectionError),
    and none took longer than its timeout (and the margin a busy machine adds)."""
    assert outcomes, "no call was made"
    for outcome in outcomes:
        if outcome.error is not None:
            assert isinstance(outcome.error, (RpcTimeout, RpcConnectionError)), outcome
        else:
            assert outcome.value == outcome.expected, outcome
        assert outcome.seconds <= timeout + RETURN_MARGIN, outcome
