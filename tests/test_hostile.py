"""Hostile input (issue 12): what someone who can push onto a served queue can and
cannot make a worker do. Each test here pins a defect found by attacking the worker."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from rpc_redis import Client, InvalidParams, RpcError, RpcRedisError, Service, Worker, protocol
from rpc_redis.embedded import EmbeddedRedis
from rpc_redis.protocol import decode_dead_letter, encode_envelope
from rpc_redis.testing import WorkerProcess, calls_in_flight, serve_in_thread, wait_until
from tests.conftest import REPOSITORY

hostile = Service("hostile")
QUEUE = protocol.queue_key("hostile")
SLOW = protocol.queue_key("slow")  # tests/slow_service.py, served by rpc-worker processes
DEAD = protocol.dead_letter_key("hostile")


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


# -- reply keys: a worker never changes a key holding data it did not write (defect 1) ----


def dead_letters(connection: redis.Redis) -> list[dict[str, object]]:
    return [decode_dead_letter(entry) for entry in connection.lrange(DEAD, 0, -1)]


@pytest.fixture(
    params=[{"receive_in_threads": True}, {"receive_in_threads": False}, {"reliable": True}],
    ids=["in-threads", "on-event-loop", "reliable"],
)
def any_worker(redis_url: str, request: pytest.FixtureRequest) -> Iterator[Worker]:
    with serve_in_thread(hostile, redis_url, **request.param) as worker:
        yield worker


@pytest.mark.parametrize("kind", ["bare", "envelope"])
def test_a_reply_never_lands_on_someone_elses_list(
    any_worker: Worker, redis_connection: redis.Redis, kind: str
) -> None:
    redis_connection.rpush("app:todo", "buy milk", "call mum")
    redis_connection.rpush("celery", "a task")
    redis_connection.pexpire("celery", 600_000)
    request = {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": "app:todo"}
    for key in ("app:todo", "celery"):
        message = bare("add", [1, 2], key) if kind == "bare" else envelope(request, key)
        redis_connection.rpush(QUEUE, message)
    wait_until(lambda: any_worker.stats.dead_lettered == 2, 5, "both dead-lettered")
    assert redis_connection.lrange("app:todo", 0, -1) == [b"buy milk", b"call mum"]
    assert redis_connection.pttl("app:todo") == -1
    assert redis_connection.lrange("celery", 0, -1) == [b"a task"]
    assert 590_000 < redis_connection.pttl("celery") <= 600_000
    reasons = sorted(str(letter["reason"]) for letter in dead_letters(redis_connection))
    assert reasons == [
        f"reply key {key!r} holds a list and is not under 'rpc:reply:': outside it a worker "
        "writes only to keys that do not exist"
        for key in ("app:todo", "celery")
    ]
    assert any_worker.stats.replied == 0


def test_a_new_key_outside_the_reply_namespace_gets_its_reply_and_an_expiry(
    any_worker: Worker, redis_connection: redis.Redis
) -> None:
    """The README's redis-cli call: a bare request whose id is a fresh UUID."""
    key = str(uuid.uuid4())
    redis_connection.rpush(QUEUE, bare("add", [1, 2], key))
    popped = redis_connection.blpop([key], 5)
    assert popped is not None and json.loads(popped[1])["result"] == 3
    redis_connection.rpush(QUEUE, bare("add", [2, 2], key))
    wait_until(lambda: redis_connection.exists(key), 5, "the second reply")
    assert 0 < redis_connection.pttl(key) <= any_worker.reply_ttl_ms


def test_a_shared_reply_key_under_the_reply_namespace_takes_many_replies(
    any_worker: Worker, redis_connection: redis.Redis
) -> None:
    """One key, many calls (as the AsyncClient does): only under {prefix}:reply:."""
    key = "rpc:reply:shared-token"
    for n in range(3):
        request = {"jsonrpc": "2.0", "method": "add", "params": [n, n], "id": n}
        redis_connection.rpush(QUEUE, envelope(request, key))
    wait_until(lambda: redis_connection.llen(key) == 3, 5, "three replies on one key")
    replies = sorted(json.loads(reply)["result"] for reply in redis_connection.lrange(key, 0, -1))
    assert replies == [0, 2, 4]
    assert 0 < redis_connection.pttl(key) <= any_worker.reply_ttl_ms


def test_a_key_of_another_type_is_left_alone_inside_the_reply_namespace_too(
    any_worker: Worker, redis_connection: redis.Redis
) -> None:
    redis_connection.hset("rpc:reply:a-hash", "field", "value")
    redis_connection.set("elsewhere", "precious")
    redis_connection.rpush(QUEUE, bare("add", [1, 2], "rpc:reply:a-hash"))
    redis_connection.rpush(QUEUE, bare("add", [1, 2], "elsewhere"))
    wait_until(lambda: any_worker.stats.dead_lettered == 2, 5, "both dead-lettered")
    assert redis_connection.hgetall("rpc:reply:a-hash") == {b"field": b"value"}
    assert redis_connection.get("elsewhere") == b"precious"
    assert redis_connection.pttl("rpc:reply:a-hash") == redis_connection.pttl("elsewhere") == -1
    reasons = sorted(str(letter["reason"]) for letter in dead_letters(redis_connection))
    assert reasons[0].startswith("reply key 'elsewhere' holds a string and is not under")
    assert reasons[1] == "reply key 'rpc:reply:a-hash' holds a hash, not a list"


# -- a refused reply: acknowledged, and dead-lettered once with the true reason (defect 4) --

released = threading.Event()  # lets held() return


@hostile.method
def held() -> str:
    """Returns once the test says so (or after 10 s): a call the test can act during."""
    released.wait(10)
    return "released"


def in_progress(connection: redis.Redis) -> list[bytes]:
    return [
        entry
        for key in connection.keys("rpc:inprogress:*")
        for entry in connection.lrange(key, 0, -1)
    ]


@pytest.fixture
def confined_url(fresh_redis: EmbeddedRedis) -> str:
    """A worker's URL on a Redis whose ACL lets it touch only the keys under rpc:."""
    with redis.Redis.from_url(fresh_redis.url) as admin:
        admin.acl_setuser(
            "worker", enabled=True, passwords=["+secret"], keys=["rpc:*"], commands=["+@all"]
        )
    return fresh_redis.url.replace("redis://", "redis://worker:secret@")


@pytest.mark.parametrize("reliable", [False, True], ids=["plain", "reliable"])
def test_a_reply_redis_refuses_is_dead_lettered_once_with_its_reason(
    fresh_redis: EmbeddedRedis, confined_url: str, reliable: bool
) -> None:
    with (
        serve_in_thread(hostile, confined_url, reliable=reliable, heartbeat_interval=0.2) as worker,
        redis.Redis.from_url(fresh_redis.url) as connection,
    ):
        connection.rpush(QUEUE, bare("add", [1, 2], "outside:the:acl"))
        wait_until(lambda: worker.stats.dead_lettered == 1, 5, "the refused reply dead-lettered")
        [letter] = dead_letters(connection)
        assert str(letter["reason"]).startswith("Redis refused the reply: ")
        assert "NOPERM" in str(letter["reason"]) or "permission" in str(letter["reason"])
        assert in_progress(connection) == []  # acknowledged: it will not run again
        assert connection.exists("outside:the:acl") == 0
        assert worker.stats.replied == 0
        # Recovery (were the request still in progress) would run now and then.
        connection.rpush(QUEUE, bare("add", [2, 2], "rpc:reply:after"))
        popped = connection.blpop(["rpc:reply:after"], 5)
        assert popped is not None and json.loads(popped[1])["result"] == 4
    assert connection.llen(DEAD) == 1 and connection.llen(QUEUE) == 0


@pytest.mark.parametrize("reliable", [False, True], ids=["plain", "reliable"])
def test_when_redis_refuses_both_reply_and_dead_letter_the_request_is_still_acknowledged(
    fresh_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture, reliable: bool
) -> None:
    caplog.set_level(logging.WARNING, logger="rpc_redis")
    released.clear()
    with (
        serve_in_thread(hostile, fresh_redis.url, reliable=reliable, heartbeat_interval=0.2),
        redis.Redis.from_url(fresh_redis.url) as connection,
    ):
        connection.rpush(QUEUE, bare("held", [], "rpc:reply:held"))
        wait_until(lambda: connection.llen(QUEUE) == 0, 5, "the call taken")
        if reliable:
            wait_until(lambda: len(in_progress(connection)) == 1, 5, "the call in progress")
        connection.config_set("maxmemory", 1)  # every write that needs memory is refused
        try:
            released.set()
            wait_until(
                lambda: any("could not dead-letter" in r.getMessage() for r in caplog.records),
                5,
                "the request given up",
            )
            wait_until(lambda: in_progress(connection) == [], 5, "the request acknowledged")
        finally:
            connection.config_set("maxmemory", 0)
        lines = [
            r.getMessage() for r in caplog.records if "could not dead-letter" in r.getMessage()
        ]
        assert len(lines) == 1
        assert "(Redis refused the reply: " in lines[0]
        assert lines[0].count("maxmemory") == 2  # the reply's refusal, then its dead letter's
    assert connection.llen(QUEUE) == 0 and connection.llen(DEAD) == 0


# -- every message with a usable reply key gets a reply or a dead letter (defect 3) -------


@hostile.method
def refuse(data: object) -> None:
    """An application error carrying the caller's own data."""
    raise RpcError("Refused", data, code=1001)


def nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [300, 990, 1020])
def test_a_reply_nested_too_deep_to_write_is_an_error_reply(
    worker: Worker, redis_connection: redis.Redis, depth: int
) -> None:
    nested = nested_json(depth)

    def call(method: str, params: str, request_id: str) -> str:
        return f'{{"jsonrpc":"2.0","method":"{method}","params":{params},"id":{request_id}}}'

    messages = {
        "rpc:reply:result": call("add", f"[{nested},[]]", '"rpc:reply:result"'),
        "rpc:reply:error": call("refuse", f"[{nested}]", '"rpc:reply:error"'),
        "rpc:reply:batch": "[{},{}]".format(
            call("add", f"[{nested},[]]", "1"), call("add", "[1,2]", '"rpc:reply:batch"')
        ),
    }
    for raw in messages.values():
        redis_connection.rpush(QUEUE, raw)
    replies = {}
    for key in messages:
        popped = redis_connection.blpop([key], 5)
        assert popped is not None, f"no reply on {key}"
        replies[key] = popped[1]
    # The result itself, if a client can read it (orjson, as clients do), else an error.
    written = f'{{"jsonrpc":"2.0","result":{nested},"id":"rpc:reply:result"}}'
    if replies["rpc:reply:result"] != written.encode():
        assert protocol.loads(replies["rpc:reply:result"])["error"]["code"] == -32603
    else:
        protocol.loads(written)
    error, batch = (protocol.loads(replies[key]) for key in ("rpc:reply:error", "rpc:reply:batch"))
    assert error["error"]["code"] == 1001 and error["error"]["message"] == "Refused"
    assert batch[1] == {"jsonrpc": "2.0", "result": 3, "id": "rpc:reply:batch"}
    assert worker.stats.dead_lettered == 0


def test_a_fault_in_the_worker_still_answers_the_message(
    worker: Worker, redis_connection: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last line of defence: whatever raises, the caller hears of it."""

    def broken(response: object) -> bytes:
        raise RuntimeError("a bug\nin the worker")

    monkeypatch.setattr("rpc_redis.protocol.encode_response", broken)
    redis_connection.rpush(QUEUE, bare("add", [1, 2], "rpc:reply:fault"))
    redis_connection.rpush(
        QUEUE, json.dumps({"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 5})
    )
    popped = redis_connection.blpop(["rpc:reply:fault"], 5)
    assert popped is not None
    reply = json.loads(popped[1])
    assert reply["id"] == "rpc:reply:fault"
    assert reply["error"]["code"] == -32603
    assert reply["error"]["data"] == {"type": "RuntimeError", "message": "a bug\\nin the worker"}
    wait_until(lambda: redis_connection.llen(DEAD) == 1, 5, "the other one dead-lettered")
    [letter] = dead_letters(redis_connection)
    assert letter["reason"] == "request has no usable reply key"


# -- bounds on batches and replies (defect 2) ---------------------------------------------

A_CALL = {"jsonrpc": "2.0", "method": "add", "params": [1, 2]}


def test_a_batch_over_the_limit_is_rejected_whole_at_once(
    worker: Worker, redis_connection: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The attack: one 4 MB message holding two million items (it took 2.7 GB, 55 s,
    a 253 MB reply and two million log lines)."""
    caplog.set_level(logging.DEBUG, logger="rpc_redis")
    limit = 1000  # the default
    first = json.dumps({**A_CALL, "id": "rpc:reply:huge-batch"}).encode()
    redis_connection.rpush(QUEUE, b"[" + first + b",1" * 2_000_000 + b"]")
    popped = redis_connection.blpop(["rpc:reply:huge-batch"], 10)
    assert popped is not None
    assert json.loads(popped[1]) == {
        "jsonrpc": "2.0",
        "error": {
            "code": -32600,
            "message": "Batch too large",
            "data": {"size": 2_000_001, "limit": limit},
        },
        "id": None,
    }
    lines = [record for record in caplog.records if record.name.startswith("rpc_redis")]
    assert len(lines) == 1, [record.getMessage() for record in lines]
    assert "batch of 2000001 requests exceeds the limit of 1000" in lines[0].getMessage()


def test_a_batch_at_the_limit_is_served_and_one_over_it_is_not(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    with serve_in_thread(hostile, redis_url, max_batch=3):
        at_limit = [{**A_CALL, "id": f"rpc:reply:three-{n}"} for n in range(3)]
        over = [*({**A_CALL, "id": n} for n in range(3)), {**A_CALL, "id": "rpc:reply:four"}]
        redis_connection.rpush(QUEUE, json.dumps(at_limit), json.dumps(over))
        redis_connection.rpush(QUEUE, json.dumps([1, 2, 3, 4]))  # no reply key
        three = redis_connection.blpop(["rpc:reply:three-0"], 5)
        four = redis_connection.blpop(["rpc:reply:four"], 5)
        wait_until(lambda: redis_connection.llen(DEAD) == 1, 5, "the unanswerable dead-lettered")
    assert three is not None and [item["result"] for item in json.loads(three[1])] == [3, 3, 3]
    assert four is not None and json.loads(four[1])["error"]["message"] == "Batch too large"
    [letter] = dead_letters(redis_connection)
    assert letter["reason"] == "batch of 4 requests exceeds the limit of 3"


def test_a_reply_over_the_limit_is_an_error_reply_saying_so(redis_url: str) -> None:
    """88 bytes that make a 100 MB reply: the example calculator's mul("x", 10**8)."""
    from services.calculator import service as calculator

    with (
        serve_in_thread(calculator, redis_url),
        Client(redis_url, timeout=10) as client,
    ):
        limit = 16 * 1024 * 1024  # the default
        with pytest.raises(RpcError) as raised:
            client.proxy("calculator").mul("x", 10**8)
        assert raised.value.code == -32603
        assert raised.value.message == "Reply too large"
        assert raised.value.data["limit"] == limit and raised.value.data["size"] > 10**8
        assert client.proxy("calculator").mul("x", 10) == "x" * 10


def test_a_batch_reply_over_the_limit_keeps_what_fits(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    with serve_in_thread(hostile, redis_url, max_reply_bytes=2000):
        batch = [
            {**A_CALL, "params": ["a" * 800, "b"], "id": "rpc:reply:parts"},
            {**A_CALL, "params": ["c" * 1400, "d"], "id": 2},
            {**A_CALL, "params": ["e" * 600, "f"], "id": 3},
        ]
        redis_connection.rpush(QUEUE, json.dumps(batch))
        popped = redis_connection.blpop(["rpc:reply:parts"], 5)
    assert popped is not None and len(popped[1]) <= 2000
    first, second, third = json.loads(popped[1])
    assert first["result"] == "a" * 800 + "b" and third["result"] == "e" * 600 + "f"
    assert second["id"] == 2 and second["error"]["message"] == "Reply too large"
    too_large = protocol.dumps({"jsonrpc": "2.0", "result": "c" * 1400 + "d", "id": 2})
    assert second["error"]["data"] == {"size": len(too_large), "limit": 2000}


def test_a_batch_of_failing_calls_costs_a_log_line_not_one_per_call(
    worker: Worker, redis_connection: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rpc_redis")
    batch = [
        *({"jsonrpc": "2.0", "method": "fail", "params": ["no"], "id": n} for n in range(500)),
        *({"jsonrpc": "2.0", "method": "nope", "id": n} for n in range(500, 998)),
        {"jsonrpc": "2.0", "method": "afail", "params": ["no"], "id": "rpc:reply:failing"},
        {"jsonrpc": "2.0", "method": "fail", "params": ["no"]},  # a notification
    ]
    redis_connection.rpush(QUEUE, json.dumps(batch))
    popped = redis_connection.blpop(["rpc:reply:failing"], 10)
    assert popped is not None and len(json.loads(popped[1])) == 999
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("rpc_redis")]
    assert len(lines) == 2, lines
    assert lines[0].startswith("502 of 1000 calls in a batch to hostile failed; the first: ")
    assert lines[1].startswith("hostile.nope: error -32601 Method not found (nope) (+497 more")


# -- every call is bounded, and so is a stop (defect 5) ------------------------------------

gate = threading.Event()  # stall() returns once it is set


@hostile.method
async def nap(seconds: float) -> float:
    """Sleeps as long as asked: no cap, unlike the example calculator's sleep."""
    await asyncio.sleep(seconds)
    return seconds


@hostile.method
def stall() -> str:
    """A plain function that returns only when the test lets it (or after 30 s)."""
    gate.wait(30)
    return "stalled"


def test_notifications_that_never_end_cannot_pin_a_workers_slots(
    worker: Worker, redis_url: str
) -> None:
    """Eight notifications of sleep(1e9) took every slot of a default worker for ever:
    each is bounded by its deadline now (a second, as its client sent it)."""
    with Client(redis_url, timeout=1) as client:
        for _ in range(worker.concurrency):
            client.proxy("hostile").notify.nap(1e9)
        wait_until(lambda: worker.in_flight == worker.concurrency, 5, "every slot taken")
        calls = client.proxy("hostile", timeout=5)
        assert [calls.add(n, n) for n in range(5)] == [0, 2, 4, 6, 8]
        # Counted as each cut-short call is done with: a moment after its slot is free.
        wait_until(lambda: worker.stats.expired == worker.concurrency, 5, "every nap cut short")


def test_a_request_with_no_deadline_gets_the_default_time_limit(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    with serve_in_thread(hostile, redis_url, concurrency=2, default_time_limit=0.3) as worker:
        for _ in range(2):
            redis_connection.rpush(
                QUEUE, json.dumps({"jsonrpc": "2.0", "method": "nap", "params": [1e9]})
            )
        redis_connection.rpush(QUEUE, bare("nap", [1e9], "rpc:reply:nap"))
        popped = redis_connection.blpop(["rpc:reply:nap"], 5)
        assert popped is not None
        assert json.loads(popped[1])["error"] == {
            "code": -32001,
            "message": "Time limit exceeded",
            "data": {"limit": 0.3},
        }
        wait_until(lambda: worker.in_flight == 0, 5, "the notifications cut short")


def test_a_plain_function_past_its_deadline_gives_its_lane_up(
    redis_url: str, redis_connection: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain function cannot be stopped; the lane it holds is given up to it, and
    another lane serves in its place."""
    caplog.set_level(logging.WARNING, logger="rpc_redis")
    gate.clear()
    options = {"concurrency": 2, "receive_in_threads": True}
    try:
        with serve_in_thread(hostile, redis_url, **options) as worker:
            request = {"jsonrpc": "2.0", "method": "stall", "id": 1}
            for n in range(2):
                message = encode_envelope(request, f"rpc:reply:stalled-{n}", time.time() + 0.2)
                redis_connection.rpush(QUEUE, message)
            wait_until(lambda: worker.stats.expired == 2, 10, "both lanes given up")
            with Client(redis_url, timeout=5) as client:
                assert client.proxy("hostile").add(1, 2) == 3
            assert worker.busy_handler_threads == 2  # the stalled calls still run
            gate.set()
            wait_until(lambda: worker.busy_handler_threads == 0, 5, "the stalled calls returned")
        assert redis_connection.keys("rpc:reply:stalled-*") == []  # nothing written for them
    finally:
        gate.set()
    lines = [
        r.getMessage() for r in caplog.records if "past its caller's deadline" in r.getMessage()
    ]
    assert len(lines) == 2
    assert lines[0].startswith("hostile.stall (id 1) ran past its caller's deadline")


def test_the_example_calculator_caps_its_sleep(redis_url: str) -> None:
    from services.calculator import service as calculator

    with serve_in_thread(calculator, redis_url), Client(redis_url, timeout=5) as client:
        calc = client.proxy("calculator")
        for seconds in (1e9, 61, -1, "1"):
            with pytest.raises(InvalidParams):
                calc.sleep(seconds)
        assert calc.sleep(0.01) == 0.01


@pytest.mark.parametrize(
    "mode",
    ["--receive-in-threads", "--no-receive-in-threads", "--reliable"],
    ids=["threads", "loop", "reliable"],
)
def test_a_stopping_worker_waits_at_most_its_drain_timeout(
    redis_url: str, redis_connection: redis.Redis, mode: str
) -> None:
    """SIGTERM waited for ever for a call that never ends; now at most --drain-timeout,
    then the worker exits naming what it abandoned (in reliable mode, put back)."""
    args = ["tests.slow_service", "--redis-url", redis_url, "--drain-timeout", "1", mode]
    failures: list[Exception] = []

    def call(client: Client) -> None:
        try:
            client.proxy("slow").sync_sleep(30)
        except RpcRedisError as exc:  # nobody answers an abandoned call
            failures.append(exc)

    with WorkerProcess(args, cwd=REPOSITORY) as worker, Client(redis_url, timeout=60) as client:
        caller = threading.Thread(target=call, args=(client,))
        caller.start()
        wait_until(lambda: calls_in_flight(redis_url, client.client_name, SLOW) == 1)
        worker.signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        assert worker.wait(10) == 0
        assert time.monotonic() - stopped_at < 4
    caller.join(10)
    assert len(failures) == 1
    [line] = [line for line in worker.lines if "abandoned" in line]
    assert "abandoned 1 request(s) still running after the drain timeout of 1s: " in line
    assert "slow.sync_sleep (id " in line
    # docs/worker.md shows the line: the same shape.
    shape = r"WARNING +rpc_redis\.worker: stopping: abandoned \d+ request\(s\) still running "
    shape += r"after the drain timeout of [\d.]+s: \w+\.\w+ \(id [^)]+\)"
    assert re.search(shape, line), line
    guide = (REPOSITORY / "docs" / "worker.md").read_text()
    assert re.search("^" + shape + "$", guide, re.M), "worker.md shows another line"
    left = redis_connection.lrange(SLOW, 0, -1)
    if mode == "--reliable":
        assert "they stay in progress, to be recovered" in line
        assert len(left) == 1 and json.loads(left[0])["request"]["method"] == "sync_sleep"
        assert redis_connection.keys("rpc:inprogress:*") == []
    else:
        assert left == []


# -- one log line and one count per dead letter (defect 7) ---------------------------------


@hostile.method
def slow(n: int) -> int:
    """Long enough (20 ms) for the lanes' keeper to take the replies a lane kept."""
    time.sleep(0.02)
    return n


def test_each_dead_letter_is_logged_and_counted_once_among_slow_calls(
    redis_url: str, redis_connection: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """1,000 dead letters gave 1,956 log lines and a doubled counter when slow calls
    were mixed in: the keeper rebuilt the commands of the outcomes it took from a lane."""
    caplog.set_level(logging.WARNING, logger="rpc_redis")
    with serve_in_thread(hostile, redis_url, receive_in_threads=True) as worker:
        messages: list[bytes] = []
        for n in range(1000):
            messages.append(f"not json {n}".encode())
            if n % 20 == 0:
                messages.append(bare("slow", [n], f"rpc:reply:slow-{n}"))
        redis_connection.rpush(QUEUE, *messages)
        for n in range(0, 1000, 20):
            assert redis_connection.blpop([f"rpc:reply:slow-{n}"], 10) is not None
        wait_until(lambda: worker.stats.dead_lettered >= 1000, 10, "1,000 dead letters")
        wait_until(lambda: worker.in_flight == 0, 5, "the worker idle")
        assert worker.stats.taken_ahead > 0  # the keeper had replies to take
        assert worker.stats.dead_lettered == 1000
    assert redis_connection.llen(DEAD) == 1000
    lines = [r for r in caplog.records if "dead-lettered a message" in r.getMessage()]
    assert len(lines) == 1000


# -- a message far over the limit costs its reading, no more -------------------------------


def test_a_message_far_over_the_limit_is_not_parsed_and_only_its_head_kept(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    """Parsed, a message many times the limit costs many times its size in memory;
    kept whole, its dead letter would cost its size again in Redis, at every push."""
    limit = 10_000
    huge = envelope({**A_CALL, "params": ["x" * 2_000_000, "y"], "id": 1}, "rpc:reply:far")
    assert len(huge) > protocol.unread_above(limit)
    with serve_in_thread(hostile, redis_url, max_message_bytes=limit) as worker:
        redis_connection.rpush(QUEUE, huge)
        wait_until(lambda: worker.stats.dead_lettered == 1, 5, "the huge message dead-lettered")
    [entry] = redis_connection.lrange(DEAD, 0, -1)
    assert len(entry) < 100_000
    letter = decode_dead_letter(entry)
    assert letter["reason"] == f"message of {len(huge)} bytes exceeds the limit of {limit}"
    assert letter["truncated"] is True and letter["size"] == len(huge)
    assert letter["raw"] == huge[: protocol.DEAD_LETTER_HEAD_BYTES]
    assert redis_connection.exists("rpc:reply:far") == 0  # not read, so not answered
