"""Hostile input (issue 12): what someone who can push onto a served queue can and
cannot make a worker do. Each test here pins a defect found by attacking the worker."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import redis

from rpc_redis import Service, Worker
from rpc_redis.testing import serve_in_thread, wait_until

hostile = Service("hostile")
QUEUE = "rpc:queue:hostile"
DEAD = "rpc:dead:hostile"


@hostile.method
def add(a: object, b: object) -> object:
    return a + b  # type: ignore[operator]


@hostile.method
def fail(text: str) -> None:
    """Raises with the caller's own text."""
    raise ValueError(text)


@hostile.method
async def afail(text: str) -> None:
    raise ValueError(text)


@pytest.fixture(params=[True, False], ids=["in-threads", "on-event-loop"])
def worker(redis_url: str, request: pytest.FixtureRequest) -> Iterator[Worker]:
    """The hostile service served both ways a worker can receive."""
    with serve_in_thread(hostile, redis_url, receive_in_threads=request.param) as worker:
        yield worker


def bare(method: object, params: object, request_id: object) -> bytes:
    request = {"jsonrpc": "2.0", "method": method, "params": params, "id": request_id}
    return json.dumps(request).encode()


def envelope(request: object, reply_to: object, **members: object) -> bytes:
    return json.dumps({"v": 1, "reply_to": reply_to, "request": request, **members}).encode()


# -- log lines: every value from a message is escaped and bounded (defect 6) --------------

FORGED = "\n2026-01-01 00:00:00,000 INFO    rpc_redis.worker: forged\r\x1b[2K\u2028"


def test_no_message_can_forge_a_log_line_or_flood_one(
    worker: Worker, redis_connection: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rpc_redis")
    request = {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1}
    messages = [
        bare("nope" + FORGED, [], "rpc:reply:method"),  # an unknown method, logged
        bare("fail", [FORGED * 1000], "rpc:reply:raised"),  # a handler's exception text
        bare("afail", [FORGED], "rpc:reply:araised"),
        bare("add", [1, 2], "rpc:queue:" + FORGED),  # a reply key refused
        envelope(request, "rpc:reply:version", v=FORGED * 1000),  # a rejection's reason
        envelope(request, "rpc:dead:" + FORGED * 100),
        bare("add", {FORGED: 1}, "rpc:reply:params"),  # invalid params name the argument
    ]
    for message in messages:
        redis_connection.rpush(QUEUE, message)
    wait_until(lambda: worker.stats.received == len(messages), 5, "every message received")
    wait_until(
        lambda: worker.stats.replied + worker.stats.dead_lettered == len(messages),
        5,
        "every message answered or dead-lettered",
    )
    lines = [record for record in caplog.records if record.name.startswith("rpc_redis")]
    assert len(lines) >= len(messages)
    for record in lines:
        text = record.getMessage()
        assert text.isprintable(), text
        assert len(text) < 1000, text
        assert record.exc_info is None or "Traceback" not in text
