"""The fuzz test: hostile messages (bench/hostile.py, as the long fuzz run pushes them)
drawn by hypothesis, each followed by a real call. Bounded: a few dozen examples, on a
worker with small limits, so that the huge ones stay small.

Every message ends as it may (never unanswered with a usable reply key), no key of
another application changes, every log line is one printable line, and the worker
goes on serving.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.hostile import (
    QUEUE,
    Limits,
    changed,
    dead_letter_messages,
    hostile_message,
    make_foreign_keys,
    outcome,
    snapshot,
)
from rpc_redis import Client, Worker
from rpc_redis.testing import serve_in_thread, wait_until
from services.calculator import service as calculator
from tests.conftest import REPOSITORY, module_output

T = TypeVar("T")
LIMITS = Limits(max_message_bytes=64 * 1024, max_batch=50, reply_bomb=10**6)
numbers = itertools.count()


class HypothesisSource:
    def __init__(self, drawn: st.DataObject) -> None:
        self.drawn = drawn

    def integer(self, low: int, high: int) -> int:
        return self.drawn.draw(st.integers(low, high))

    def pick(self, options: Sequence[T]) -> T:
        return self.drawn.draw(st.sampled_from(options))

    def data(self, size: int) -> bytes:
        return self.drawn.draw(st.binary(min_size=size, max_size=size))


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@dataclass
class Fuzzed:
    worker: Worker
    connection: redis.Redis
    client: Client
    foreign: dict[str, tuple[bytes | None, bool]]
    log: Lines

    def __repr__(self) -> str:  # hypothesis prints it with every failing example
        return f"Fuzzed({self.worker!r})"


@pytest.fixture(params=[True, False], ids=["in-threads", "on-event-loop"])
def fuzzed(redis_url: str, request: pytest.FixtureRequest) -> Iterator[Fuzzed]:
    options = {
        "receive_in_threads": request.param,
        "max_message_bytes": LIMITS.max_message_bytes,
        "max_batch": LIMITS.max_batch,
        "max_reply_bytes": LIMITS.max_message_bytes,
    }
    log = Lines()
    logging.getLogger("rpc_redis").addHandler(log)
    try:
        with (
            redis.Redis.from_url(redis_url) as connection,
            serve_in_thread(calculator, redis_url, **options) as worker,
            Client(redis_url, timeout=10) as client,
        ):
            make_foreign_keys(connection)
            yield Fuzzed(worker, connection, client, snapshot(connection), log)
    finally:
        logging.getLogger("rpc_redis").removeHandler(log)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_hostile_message_ends_as_it_may_and_changes_no_one_elses_key(
    fuzzed: Fuzzed, data: st.DataObject
) -> None:
    message = hostile_message(HypothesisSource(data), next(numbers), LIMITS)
    connection = fuzzed.connection
    connection.rpush(QUEUE, message.raw)
    assert fuzzed.client.proxy("calculator").add(20, 22) == 42  # still serving

    def ended() -> bool:
        return outcome(connection, message, dead_letter_messages(connection)) in message.ends

    wait_until(ended, 5, f"{message!r} to end as it may")
    assert changed(fuzzed.foreign, connection) == []
    for line in fuzzed.log.lines:
        assert line.isprintable() and len(line) < 2000, line


def test_a_short_fuzz_run_breaks_no_rule() -> None:
    report = module_output("bench.fuzz", "--messages", "600", timeout=300)
    for line in (
        "with a usable reply key that got neither a reply nor a dead letter: 0",
        "ended otherwise than they may: 0",
        "foreign keys changed: 0",
        "worker alive and answering: yes, exit code 0",
        "keys left without expiry (undocumented): none",
        " 0 not on one printable line",
    ):
        assert line in report, report
    assert " 0 wrong, 0 failed" in report, report
    for quoted in quoted_figures():  # reliability.md quotes a run: same lines, same rules
        shape = re.sub(r"\d[\d,.]*", r"[\\d,.]+", re.escape(quoted))
        assert re.search(f"^{shape}$", report, re.M), f"{quoted!r} is not what it prints"


def quoted_figures() -> list[str]:
    """The figures docs/reliability.md quotes from `python -m bench.fuzz`."""
    page = (REPOSITORY / "docs" / "reliability.md").read_text()
    block = re.search(r"^\$ python -m bench\.fuzz\n(.*?)^```", page, re.M | re.S)
    assert block is not None, "reliability.md quotes no fuzz run"
    lines = block[1].splitlines()
    assert len(lines) >= 10
    for must_be_zero in ("got neither", "ended otherwise", "foreign keys changed"):
        assert any(line.endswith(": 0") for line in lines if must_be_zero in line), must_be_zero
    return lines
