"""The worker against bad input, foreign callers, deadlines and leftover keys."""

from __future__ import annotations

import json
import logging
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from rpc_redis import Client, RpcTimeout, Service, Worker
from rpc_redis.embedded import find_cli_binary
from rpc_redis.protocol import decode_dead_letter, encode_envelope
from rpc_redis.testing import serve_in_thread, wait_until
from services.calculator import service as calculator

QUEUE = "rpc:queue:{calculator}"
DEAD = "rpc:dead:{calculator}"


@pytest.fixture(params=[True, False], ids=["in-threads", "on-event-loop"])
def worker(redis_url: str, request: pytest.FixtureRequest) -> Iterator[Worker]:
    """The calculator served both ways a worker can receive: every rule here holds for both."""
    options = {"max_message_bytes": 10_000, "receive_in_threads": request.param}
    with serve_in_thread(calculator, redis_url, **options) as worker:
        assert worker.uses_lanes is request.param
        yield worker


def pop_reply(connection: redis.Redis, key: str, timeout: float = 5) -> dict:  # type: ignore[type-arg]
    popped = connection.blpop([key], timeout)
    assert popped is not None, f"no reply on {key}"
    return json.loads(popped[1])  # type: ignore[no-any-return]


def dead_letters(connection: redis.Redis) -> list[dict]:  # type: ignore[type-arg]
    return [decode_dead_letter(entry) for entry in connection.lrange(DEAD, 0, -1)]


def wait_for_dead_letters(connection: redis.Redis, count: int) -> list[dict]:  # type: ignore[type-arg]
    """Wait (5 s at most) until ``count`` dead letters are in, then return them all."""
    wait_until(lambda: connection.llen(DEAD) >= count, 5, f"{count} dead letter(s)")
    return dead_letters(connection)


def assert_still_serving(url: str) -> None:
    with Client(url, timeout=5) as client:
        assert client.proxy("calculator").add(40, 2) == 42


# -- bare requests from any language -------------------------------------------------


def test_bare_request_is_answered_on_the_key_its_id_names(
    worker: Worker, redis_connection: redis.Redis
) -> None:
    request_id = str(uuid.uuid4())
    request = {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": request_id}
    redis_connection.rpush(QUEUE, json.dumps(request))
    assert pop_reply(redis_connection, request_id) == {
        "jsonrpc": "2.0",
        "result": 3,
        "id": request_id,
    }
    assert redis_connection.exists(request_id) == 0


def test_bare_batch_is_answered_on_the_first_string_id(
    worker: Worker, redis_connection: redis.Redis
) -> None:
    batch = [
        {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": "batch-1"},
        {"jsonrpc": "2.0", "method": "mul", "params": [2, 3], "id": "batch-2"},
        {"jsonrpc": "2.0", "method": "sub", "params": [9, 1]},
    ]
    redis_connection.rpush(QUEUE, json.dumps(batch))
    reply = pop_reply(redis_connection, "batch-1")
    assert reply == [
        {"jsonrpc": "2.0", "result": 3, "id": "batch-1"},
        {"jsonrpc": "2.0", "result": 6, "id": "batch-2"},
    ]


def run_cli(port: int, *args: str) -> str:
    cli = find_cli_binary()
    assert cli is not None
    done = subprocess.run(
        [cli, "-p", str(port), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


def test_redis_cli_bare_request_and_envelope(
    worker: Worker, redis_server: object, redis_connection: redis.Redis
) -> None:
    port = redis_connection.connection_pool.connection_kwargs["port"]
    bare = '{"jsonrpc":"2.0","method":"add","params":[1,2],"id":"cli-call-1"}'
    assert run_cli(port, "RPUSH", QUEUE, bare) == "1"  # the list length after the push
    assert run_cli(port, "BLPOP", "cli-call-1", "5").splitlines() == [
        "cli-call-1",
        '{"jsonrpc":"2.0","result":3,"id":"cli-call-1"}',
    ]
    envelope = (
        '{"v":1,"reply_to":"rpc:reply:cli-2",'
        '"request":{"jsonrpc":"2.0","method":"mul","params":{"a":6,"b":7},"id":2}}'
    )
    run_cli(port, "RPUSH", QUEUE, envelope)
    assert run_cli(port, "BLPOP", "rpc:reply:cli-2", "5").splitlines()[1] == (
        '{"jsonrpc":"2.0","result":42,"id":2}'
    )


def test_worker_serves_a_custom_list_name(redis_url: str, redis_connection: redis.Redis) -> None:
    with serve_in_thread(calculator, redis_url, queue="rpc"):
        request = {"jsonrpc": "2.0", "method": "add", "params": [2, 2], "id": "on-rpc"}
        redis_connection.rpush("rpc", json.dumps(request))
        assert pop_reply(redis_connection, "on-rpc")["result"] == 4


def test_reply_is_never_pushed_onto_a_served_queue(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    with serve_in_thread(calculator, redis_url, queue="rpc") as worker:
        looping = {"jsonrpc": "2.0", "method": "add", "params": [1, 1], "id": "rpc"}
        redis_connection.rpush("rpc", json.dumps(looping))
        [letter] = wait_for_dead_letters(redis_connection, 1)
        assert "names a request queue" in letter["reason"]
        assert json.loads(letter["message"]) == looping
        assert letter["queue"] == "rpc"
        assert redis_connection.llen("rpc") == 0
        assert worker.stats.replied == 0


def test_reply_key_in_the_queue_namespace_is_dead_lettered(
    worker: Worker, redis_connection: redis.Redis
) -> None:
    message = encode_envelope(
        {"jsonrpc": "2.0", "method": "add", "params": [1, 1], "id": 1}, "rpc:queue:{other}", None
    )
    redis_connection.rpush(QUEUE, message)
    [letter] = wait_for_dead_letters(redis_connection, 1)
    assert "names a request queue" in letter["reason"]
    assert redis_connection.llen("rpc:queue:{other}") == 0


# -- bad input: an error reply or a dead letter, one log line, the worker goes on -----


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x00\xffnot json at all", "not valid JSON"),
        (b'{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 7}', "no usable reply key"),
        (b'{"hello": "world"}', "no usable reply key"),
        (b"[1, 2, 3]", "no usable reply key"),
        (b'"just a string"', "no usable reply key"),
        (
            b'{"v": 1, "request": {"jsonrpc": "2.0", "method": "add", "id": 1}}',
            "no usable reply key",
        ),
    ],
)
def test_messages_without_a_reply_key_are_dead_lettered(
    worker: Worker,
    redis_url: str,
    redis_connection: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
    reason: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="rpc_redis")
    redis_connection.rpush(QUEUE, raw)
    [letter] = wait_for_dead_letters(redis_connection, 1)
    assert reason in letter["reason"]
    assert letter["raw"] == raw
    assert letter["queue"] == QUEUE
    assert abs(letter["time"] - time.time()) < 60
    # Logged, then counted, once Redis has answered: a moment after the entry is in.
    wait_until(lambda: worker.stats.dead_lettered == 1, 5, "the dead letter counted")
    lines = [r for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert len(lines) == 1
    assert_still_serving(redis_url)


@pytest.mark.parametrize(
    ("request_body", "code"),
    [
        ({"jsonrpc": "1.0", "method": "add", "params": [1, 2], "id": "bad-version"}, -32600),
        ({"jsonrpc": "2.0", "method": 5, "id": "bad-method"}, -32600),
        ({"jsonrpc": "2.0", "method": "add", "params": 3, "id": "bad-params"}, -32600),
        ({"jsonrpc": "2.0", "method": "nope", "id": "unknown"}, -32601),
        ({"jsonrpc": "2.0", "method": "add", "params": [1], "id": "wrong-params"}, -32602),
        ({"jsonrpc": "2.0", "method": "add", "params": ["a", 1], "id": "type-error"}, -32603),
    ],
)
def test_bad_requests_get_error_replies(
    worker: Worker,
    redis_url: str,
    redis_connection: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    request_body: dict,  # type: ignore[type-arg]
    code: int,
) -> None:
    caplog.set_level(logging.WARNING, logger="rpc_redis")
    redis_connection.rpush(QUEUE, json.dumps(request_body))
    reply = pop_reply(redis_connection, request_body["id"])
    assert reply["error"]["code"] == code
    assert reply["id"] == request_body["id"]
    assert "result" not in reply
    assert len([r for r in caplog.records if r.name.startswith("rpc_redis")]) == 1
    assert_still_serving(redis_url)


def test_oversized_message_gets_an_error_reply(
    worker: Worker, redis_url: str, redis_connection: redis.Redis
) -> None:
    request = {"jsonrpc": "2.0", "method": "add", "params": ["x" * 20_000, "y"], "id": "big"}
    redis_connection.rpush(QUEUE, json.dumps(request))
    reply = pop_reply(redis_connection, "big")
    assert reply["error"]["code"] == -32600
    assert reply["error"]["message"] == "Request too large"
    assert reply["error"]["data"]["limit"] == 10_000
    assert worker.stats.rejected == 1
    assert_still_serving(redis_url)


def test_oversized_garbage_is_dead_lettered(worker: Worker, redis_connection: redis.Redis) -> None:
    redis_connection.rpush(QUEUE, b"{" * 20_000)
    [letter] = wait_for_dead_letters(redis_connection, 1)
    assert "exceeds the limit" in letter["reason"]


def test_client_sees_too_large_as_invalid_request(worker: Worker, redis_url: str) -> None:
    from rpc_redis import InvalidRequest

    with Client(redis_url, timeout=5) as client:
        with pytest.raises(InvalidRequest, match="Request too large"):
            client.proxy("calculator").add("x" * 20_000, "y")


def test_unserialisable_result_gets_an_error_reply(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    service = Service("odd")

    @service.method
    def make_object() -> object:
        return object()

    @service.method
    def make_big_int() -> int:
        return 2**70

    with serve_in_thread(service, redis_url), Client(redis_url, timeout=5) as client:
        odd = client.proxy("odd")
        from rpc_redis import InternalError

        with pytest.raises(InternalError, match="not JSON serialisable"):
            odd.make_object()
        with client.batch("odd") as batch:
            big = batch.make_big_int()
            bad = batch.make_object()
        assert big.result() == 2**70
        with pytest.raises(InternalError):
            bad.result()


def test_dead_letters_are_bounded(redis_url: str, redis_connection: redis.Redis) -> None:
    with serve_in_thread(calculator, redis_url, dead_letter_limit=3, concurrency=1) as worker:
        for n in range(5):
            redis_connection.rpush(QUEUE, f"garbage {n}")
        wait_until(lambda: worker.stats.dead_lettered == 5, 5, "5 dead letters")
    assert [letter["message"] for letter in dead_letters(redis_connection)] == [
        "garbage 2",
        "garbage 3",
        "garbage 4",
    ]


# -- deadlines and keys ------------------------------------------------------------


def test_expired_requests_are_skipped_without_reply(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    request = {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1}
    redis_connection.rpush(QUEUE, encode_envelope(request, "rpc:reply:late", time.time() - 1))
    with serve_in_thread(calculator, redis_url) as worker:
        assert_still_serving(redis_url)
        assert worker.stats.expired == 1
    assert redis_connection.exists("rpc:reply:late") == 0


def test_every_key_left_behind_carries_an_expiry(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    with serve_in_thread(calculator, redis_url, reply_ttl=30), Client(redis_url) as client:
        calc = client.proxy("calculator")
        fast = client.proxy("calculator", timeout=0.2)
        for n in range(20):
            assert calc.add(n, n) == 2 * n
        for _ in range(3):
            with pytest.raises(RpcTimeout):
                fast.sleep(0.4)
        with client.batch("calculator") as batch:
            batch.add(1, 1)
        calc.notify.add(1, 1)
    # The worker drained the sleeps before stopping: their unread replies remain.
    keys = redis_connection.keys("*")
    assert len(keys) == 3
    for key in keys:
        ttl = redis_connection.pttl(key)
        assert 0 < ttl <= 30_000, (key, ttl)


# -- regressions -------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"method": "add", "params": [1, 2]}',
        b'{"v": 1, "request": {"jsonrpc": "2.0", "method": "add", "params": 5}}',
        b'{"v": 1, "request": [{"jsonrpc": "2.0", "method": "add"}, {"method": "add"}]}',
    ],
)
def test_malformed_notifications_are_dead_lettered_not_crashed_on(
    worker: Worker,
    redis_url: str,
    redis_connection: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
) -> None:
    redis_connection.rpush(QUEUE, raw)
    [letter] = wait_for_dead_letters(redis_connection, 1)
    assert "no usable reply key" in letter["reason"]
    assert not [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert_still_serving(redis_url)


def test_a_request_id_of_the_wrong_type_still_gets_its_error_reply(
    worker: Worker, redis_connection: redis.Redis
) -> None:
    request = {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": [1]}
    redis_connection.rpush(QUEUE, encode_envelope(request, "rpc:reply:odd-id", None))
    reply = pop_reply(redis_connection, "rpc:reply:odd-id")
    assert reply["error"]["code"] == -32600
    assert reply["id"] is None


def test_a_batch_rejected_whole_fails_every_call_in_it(worker: Worker, redis_url: str) -> None:
    from rpc_redis import InvalidRequest

    with Client(redis_url, timeout=5) as client:
        batch = client.batch("calculator")
        calls = [batch.add("x" * 4_000, "y") for _ in range(3)]
        outcomes = batch.send()
    assert len(outcomes) == 3
    for call in calls:
        with pytest.raises(InvalidRequest, match="Request too large"):
            call.result()


@pytest.mark.parametrize("version", ["true", "1.0", '"1"', "2"])
def test_only_envelope_version_1_is_accepted(
    worker: Worker, redis_connection: redis.Redis, version: str
) -> None:
    request = '{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 9}'
    redis_connection.rpush(
        QUEUE, f'{{"v": {version}, "reply_to": "rpc:reply:v", "request": {request}}}'
    )
    reply = pop_reply(redis_connection, "rpc:reply:v")
    assert reply["error"] == {
        "code": -32600,
        "message": "Invalid request",
        "data": f"unsupported envelope version {version}",
    }
    assert reply["id"] == 9


def test_a_reply_key_holding_another_type_is_left_alone_and_the_request_dead_lettered(
    worker: Worker,
    redis_url: str,
    redis_connection: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rpc_redis")
    redis_connection.set("a-string-key", "not a list")
    request = {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": "a-string-key"}
    redis_connection.rpush(QUEUE, json.dumps(request))
    [letter] = wait_for_dead_letters(redis_connection, 1)
    assert letter["reason"] == (
        "reply key 'a-string-key' holds a string and is not under 'rpc:reply:': outside it a "
        "worker writes only to keys that do not exist"
    )
    assert json.loads(letter["message"]) == request
    assert redis_connection.get("a-string-key") == b"not a list"
    assert redis_connection.pttl("a-string-key") == -1  # no expiry was put on it
    wait_until(lambda: worker.stats.dead_lettered == 1, 5, "the dead letter counted")
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("rpc_redis")]
    assert len(lines) == 1 and "dead-lettered" in lines[0]
    assert_still_serving(redis_url)


@pytest.mark.parametrize(
    "key", ["rpc:dead:{calculator}", "rpc:workers", "rpc:inprogress:x:y", "rpc:deliveries:z"]
)
def test_reply_keys_naming_the_librarys_own_keys_are_refused(
    worker: Worker, redis_connection: redis.Redis, key: str
) -> None:
    request = {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": key}
    redis_connection.rpush(QUEUE, json.dumps(request))
    letters = wait_for_dead_letters(redis_connection, 1)
    assert "is one of the library's own keys" in letters[0]["reason"]
    assert redis_connection.pttl(DEAD) == -1  # the dead letters were not given an expiry


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 400 + b"]" * 400,
        b'[[{"jsonrpc": "2.0", "method": "nope"}]]',
        b'{"v": 1, "request": [[{"jsonrpc": "2.0", "method": "nope"}]]}',
    ],
)
def test_nested_arrays_are_dead_lettered_not_lost(
    worker: Worker, redis_url: str, redis_connection: redis.Redis, raw: bytes
) -> None:
    redis_connection.rpush(QUEUE, raw)
    [letter] = wait_for_dead_letters(redis_connection, 1)
    assert letter["raw"] == raw
    assert letter["reason"] == "request has no usable reply key"
    assert_still_serving(redis_url)


def test_a_queue_key_of_the_wrong_type_is_logged_once_and_waited_out(
    redis_url: str, redis_connection: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis_connection.set(QUEUE, "someone else's string")
    with serve_in_thread(calculator, redis_url) as worker:
        wait_until(
            lambda: any("refused to pop" in r.getMessage() for r in caplog.records),
            5,
            "the refusal logged",
        )
        redis_connection.delete(QUEUE)
        assert_still_serving(redis_url)  # the worker outlived it and serves again
        assert not worker.stopped.is_set()
    assert sum("refused to pop" in r.getMessage() for r in caplog.records) == 1
