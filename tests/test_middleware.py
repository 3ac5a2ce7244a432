"""Middleware in the worker: around every handler, in both ways of receiving, and
through a real rpc-worker with --middleware."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from rpc_redis import CallContext, Client, Middleware, RpcError, Service, current_call
from rpc_redis.protocol import encode_envelope
from rpc_redis.testing import WorkerProcess, serve_in_thread
from services.middleware import UNAUTHORIZED, SharedToken
from tests.conftest import REPOSITORY

service = Service("hooked")


@service.method
def whoami() -> dict[str, Any]:
    call = current_call()
    assert call is not None
    return {"meta": call.meta, "method": call.method, "params": call.params}


@service.method
def fail() -> None:
    raise KeyError("sku")


@service.method
async def whoami_async() -> dict[str, Any]:
    call = current_call()
    assert call is not None
    return {"meta": call.meta}


class Recorder(Middleware):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, Any, Any]] = []

    def before_call(self, call: CallContext) -> None:
        self.seen.append(("before", call.method, call.params, None))

    def after_call(self, call: CallContext, result: Any, error: RpcError | None) -> None:
        self.seen.append(("after", call.method, result, error and error.code))


class Refuses(Middleware):
    def before_call(self, call: CallContext) -> None:
        if call.method == "fail":
            raise RpcError("Forbidden", {"method": call.method}, code=4003)


class Broken(Middleware):
    def before_call(self, call: CallContext) -> None:
        raise ValueError("a bug in a hook")

    def after_call(self, call: CallContext, result: Any, error: RpcError | None) -> None:
        raise ValueError("another bug")


@pytest.fixture(params=[True, False], ids=["in-threads", "on-event-loop"])
def receiving(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def call_with_meta(
    connection: redis.Redis, method: str, meta: Any, reply_to: str = "rpc:reply:meta"
) -> dict[str, Any]:
    request = {"jsonrpc": "2.0", "method": method, "id": 1}
    envelope = json.loads(encode_envelope(request, reply_to, None))
    envelope["meta"] = meta
    connection.rpush("rpc:queue:{hooked}", json.dumps(envelope))
    popped = connection.blpop([reply_to], 5)
    assert popped is not None
    return json.loads(popped[1])  # type: ignore[no-any-return]


def test_hooks_run_around_each_handler_with_its_result_or_error(
    redis_url: str, receiving: bool
) -> None:
    recorder = Recorder()
    options = {"receive_in_threads": receiving, "middleware": [recorder]}
    with serve_in_thread(service, redis_url, **options), Client(redis_url, timeout=5) as client:
        proxy = client.proxy("hooked")
        assert proxy.whoami() == {"meta": {}, "method": "whoami", "params": []}
        with pytest.raises(RpcError):
            proxy.fail()
    assert recorder.seen == [
        ("before", "whoami", [], None),
        ("after", "whoami", {"meta": {}, "method": "whoami", "params": []}, None),
        ("before", "fail", [], None),
        ("after", "fail", None, -32603),
    ]


def test_a_worker_hook_refuses_a_method_with_its_own_code(redis_url: str, receiving: bool) -> None:
    options = {"receive_in_threads": receiving, "middleware": [Refuses()]}
    with serve_in_thread(service, redis_url, **options), Client(redis_url, timeout=5) as client:
        with pytest.raises(RpcError) as refused:
            client.proxy("hooked").fail()
        assert (refused.value.code, refused.value.message) == (4003, "Forbidden")
        assert refused.value.data == {"method": "fail"}
        assert client.proxy("hooked").whoami()["method"] == "whoami"


def test_a_hook_that_raises_is_logged_and_harmless(
    redis_url: str, receiving: bool, caplog: pytest.LogCaptureFixture
) -> None:
    options = {"receive_in_threads": receiving, "middleware": [Broken()]}
    with serve_in_thread(service, redis_url, **options), Client(redis_url, timeout=5) as client:
        assert client.proxy("hooked").whoami()["method"] == "whoami"
    lines = [r.getMessage() for r in caplog.records if r.name == "rpc_redis.middleware"]
    assert len(lines) == 2, lines
    assert "Broken.before_call raised ValueError: a bug in a hook" in lines[0]
    assert "Broken.after_call raised ValueError: another bug" in lines[1]


@pytest.mark.parametrize("method", ["whoami", "whoami_async"])
def test_the_envelope_meta_reaches_the_handler(
    redis_url: str, redis_connection: redis.Redis, receiving: bool, method: str
) -> None:
    meta = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    with serve_in_thread(service, redis_url, receive_in_threads=receiving):
        reply = call_with_meta(redis_connection, method, meta)
    assert reply["result"]["meta"] == meta


@pytest.mark.parametrize(
    ("meta", "problem"),
    [
        (["not", "an", "object"], "envelope meta must be an object of strings"),
        ({"n": 1}, "envelope meta values must be strings"),
        ({"k": "v" * 1025}, "at most 1024 characters"),
        ({f"k{n}": "v" for n in range(33)}, "more than 32 members"),
        ({"": "v"}, "keys must be 1 to 64 characters"),
    ],
)
def test_a_meta_out_of_bounds_is_an_invalid_request(
    redis_url: str, redis_connection: redis.Redis, meta: Any, problem: str
) -> None:
    with serve_in_thread(service, redis_url):
        reply = call_with_meta(redis_connection, "whoami", meta)
    assert reply["error"]["code"] == -32600
    assert problem in reply["error"]["data"]


def test_rpc_worker_runs_middleware_named_on_its_command_line(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    env = {**os.environ, "RPC_SHARED_TOKEN": "s3cret"}
    args = [
        "services.calculator",
        "--redis-url",
        redis_url,
        "--middleware",
        "services.middleware:Timing",  # a class, made with no arguments
        "--middleware",
        "services.middleware:SharedToken",
    ]
    with WorkerProcess(args, cwd=REPOSITORY, env=env) as worker:
        with Client(redis_url, timeout=5) as client:
            with pytest.raises(RpcError) as refused:
                client.proxy("calculator").add(1, 2)
            assert refused.value.code == UNAUTHORIZED
        envelope = json.loads(
            encode_envelope(
                {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 7},
                "rpc:reply:token",
                None,
                meta={"token": "s3cret"},
            )
        )
        redis_connection.rpush("rpc:queue:{calculator}", json.dumps(envelope))
        popped = redis_connection.blpop(["rpc:reply:token"], 5)
        assert popped is not None and json.loads(popped[1])["result"] == 3
        worker.wait_for_line(r"calculator\.add took [\d.]+ ms: error 4001")
        worker.wait_for_line(r"calculator\.add took [\d.]+ ms: ok")


@pytest.mark.parametrize(
    "target", ["services.middleware:nothing", "services.middleware", "no.such.module:X"]
)
def test_a_middleware_that_cannot_be_loaded_exits_2(redis_url: str, target: str) -> None:
    worker = WorkerProcess(
        ["services.calculator", "--redis-url", redis_url, "--middleware", target], cwd=REPOSITORY
    )
    worker.start(ready_timeout=0)
    assert worker.wait(20) == 2
    assert worker.lines[-1].startswith("rpc-worker: error: "), worker.output


def test_the_shared_token_check_fails_closed_on_any_token(redis_url: str) -> None:
    check = SharedToken("s3cret")
    for offered in ["", "wrong", "s3cret ", "ünïcödé", "s3cret\x00"]:
        call = CallContext("calculator", "add", meta={"token": offered})
        with pytest.raises(RpcError):
            check.before_call(call)
    check.before_call(CallContext("calculator", "add", meta={"token": "s3cret"}))


@pytest.fixture(autouse=True)
def _log_at_info(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO)
    yield


def test_a_received_call_is_the_call_its_constructor_makes() -> None:
    """Receivers build their calls field by field into the slots (quicker than the
    frozen dataclass's __init__): every field lands where the constructor puts it, and
    the call stays frozen."""
    import dataclasses

    from rpc_redis.context import received_call

    values = ("svc", "m", [1], {"k": "v"}, 7, 12.5, False, "orders", 3, "1-0")
    names = [field.name for field in dataclasses.fields(CallContext)]
    assert len(names) == len(values)  # a new field must be added to received_call too
    received = received_call(*values)  # type: ignore[arg-type]
    assert received == CallContext(*values)  # type: ignore[arg-type]
    assert [getattr(received, name) for name in names] == list(values)
    assert received_call("svc", "m", [], {}, None, None, True) == CallContext(
        "svc", "m", [], {}, None, None, True
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        received.method = "other"  # type: ignore[misc]
