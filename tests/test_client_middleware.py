"""Client middleware in both clients: ``before_send`` sees each call and may add to the
envelope's ``meta`` (which the handler reads as ``current_call().meta``) or refuse it;
``after_reply`` sees each outcome; a hook that breaks is logged and harmless."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from rpc_redis import (
    CallContext,
    Middleware,
    RpcConnectionError,
    RpcError,
    RpcTimeout,
    Service,
    current_call,
)
from rpc_redis.embedded import free_port
from rpc_redis.testing import WorkerProcess, serve_in_thread
from services.calculator import DIVISION_BY_ZERO
from services.middleware import UNAUTHORIZED, SharedToken
from tests.client_twins import Twin, twin_fixture  # noqa: F401  (the fixture "twin")
from tests.conftest import REPOSITORY

service = Service("meta")
seen_meta: list[dict[str, str]] = []
notified = threading.Event()


@service.method
def echo_meta() -> dict[str, str]:
    call = current_call()
    assert call is not None
    return call.meta


@service.method
def add(a: int, b: int) -> int:
    return a + b


@service.method
def fail() -> None:
    raise RpcError("Division by zero", code=DIVISION_BY_ZERO)


@service.method
def note() -> None:
    call = current_call()
    assert call is not None
    seen_meta.append(dict(call.meta))
    notified.set()


class Recorder(Middleware):
    """Records every hook call; ``meta`` is added to each call's meta."""

    def __init__(self, meta: dict[str, Any] | None = None) -> None:
        self.meta = meta or {}
        self.sent: list[CallContext] = []
        self.replies: list[tuple[CallContext, Any, BaseException | None]] = []
        self.replied = threading.Event()

    def before_send(self, call: CallContext) -> None:
        self.sent.append(call)
        call.meta.update(self.meta)

    def after_reply(self, call: CallContext, result: Any, error: BaseException | None) -> None:
        self.replies.append((call, result, error))
        self.replied.set()


@pytest.fixture
def served(redis_url: str) -> Iterator[str]:
    seen_meta.clear()
    notified.clear()
    with serve_in_thread(service, redis_url):
        yield redis_url


def test_meta_added_before_sending_reaches_the_handler(served: str, twin: Twin) -> None:
    recorder = Recorder({"token": "t0k3n", "trace": "abc"})
    client = twin.connect(served, timeout=5, middleware=[recorder])
    started = time.time()
    assert client.proxy("meta").echo_meta() == {"token": "t0k3n", "trace": "abc"}
    assert client.call("meta", "add", [1, 2]) == 3
    first, second = recorder.sent
    assert (first.service, first.method, first.params) == ("meta", "echo_meta", [])
    assert (second.method, second.params, second.is_notification) == ("add", [1, 2], False)
    assert first.request_id is not None and first.request_id != second.request_id
    assert first.deadline is not None and started + 4 < first.deadline <= time.time() + 5
    assert [(call, result, error) for call, result, error in recorder.replies] == [
        (first, {"token": "t0k3n", "trace": "abc"}, None),
        (second, 3, None),
    ]


def test_after_reply_sees_the_error_the_caller_gets(served: str, twin: Twin) -> None:
    recorder = Recorder()
    client = twin.connect(served, timeout=5, middleware=[recorder])
    with pytest.raises(RpcError) as failed:
        client.proxy("meta").fail()
    with pytest.raises(RpcTimeout) as timed_out:
        client.proxy("nobody", timeout=0.2).anything()
    assert [error for _, _, error in recorder.replies] == [failed.value, timed_out.value]
    assert failed.value.code == DIVISION_BY_ZERO
    assert [result for _, result, _ in recorder.replies] == [None, None]


def test_after_reply_sees_a_connection_error(twin: Twin) -> None:
    recorder = Recorder()
    client = twin.connect(f"redis://127.0.0.1:{free_port()}/0", timeout=1, middleware=[recorder])
    with pytest.raises(RpcConnectionError) as caught:
        client.proxy("meta").add(1, 2)
    assert [(call.method, error) for call, _, error in recorder.replies] == [("add", caught.value)]


def test_a_notification_carries_meta_and_is_seen_once_pushed(served: str, twin: Twin) -> None:
    recorder = Recorder({"who": "notifier"})
    client = twin.connect(served, timeout=5, middleware=[recorder])
    assert client.proxy("meta").notify.note() is None
    assert notified.wait(5)
    assert seen_meta == [{"who": "notifier"}]
    (call,) = recorder.sent
    assert (call.method, call.request_id, call.is_notification) == ("note", None, True)
    assert recorder.replies == [(call, None, None)]


def test_a_batch_runs_the_hooks_per_call_and_shares_one_meta(served: str, twin: Twin) -> None:
    recorder = Recorder({"batch": "yes"})
    client = twin.connect(served, timeout=5, middleware=[recorder])
    with client.batch("meta") as batch:
        total = batch.add(1, 2)
        failure = batch.fail()
        batch.notify.note()
        meta = batch.echo_meta()
    assert total.result() == 3
    assert meta.result() == {"batch": "yes"}
    with pytest.raises(RpcError):
        failure.result()
    assert notified.wait(5) and seen_meta == [{"batch": "yes"}]
    assert [call.method for call in recorder.sent] == ["add", "fail", "note", "echo_meta"]
    assert [call.is_notification for call in recorder.sent] == [False, False, True, False]
    assert all(call.meta is recorder.sent[0].meta for call in recorder.sent)  # one envelope
    outcomes = {call.method: (result, error) for call, result, error in recorder.replies}
    assert outcomes["add"] == (3, None)
    assert outcomes["note"] == (None, None)
    assert outcomes["echo_meta"] == ({"batch": "yes"}, None)
    assert isinstance(outcomes["fail"][1], RpcError) and outcomes["fail"][0] is None
    assert len(recorder.replies) == 4


class Refuser(Middleware):
    def before_send(self, call: CallContext) -> None:
        raise RpcError("no token", code=4001)


def test_before_send_raising_rpc_error_fails_the_call_without_sending(
    redis_url: str, redis_connection: redis.Redis, twin: Twin
) -> None:
    recorder = Recorder()
    client = twin.connect(redis_url, timeout=5, middleware=[Refuser(), recorder])
    started = time.monotonic()
    with pytest.raises(RpcError, match="no token") as caught:
        client.proxy("nobody").anything()
    with pytest.raises(RpcError, match="no token"):
        client.proxy("nobody").notify.anything()
    with pytest.raises(RpcError, match="no token"):
        with client.batch("nobody") as batch:
            batch.anything()
    assert time.monotonic() - started < 1
    assert redis_connection.llen("rpc:queue:{nobody}") == 0  # nothing was sent
    assert recorder.sent == []  # the chain stopped at the refusal...
    assert len(recorder.replies) == 3  # ...and each refused call's outcome was shown
    assert recorder.replies[0][2] is caught.value


class Broken(Middleware):
    def before_send(self, call: CallContext) -> None:
        raise ValueError("a bug in before_send")

    def after_reply(self, call: CallContext, result: Any, error: BaseException | None) -> None:
        raise KeyError("a bug in after_reply")


def test_a_hook_that_raises_anything_else_is_logged_and_the_call_goes_on(
    served: str, twin: Twin, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder({"after": "broken"})
    client = twin.connect(served, timeout=5, middleware=[Broken(), recorder])
    with caplog.at_level(logging.ERROR, logger="rpc_redis.middleware"):
        assert client.proxy("meta").echo_meta() == {"after": "broken"}
    assert recorder.replied.is_set()
    messages = [record.getMessage() for record in caplog.records]
    assert any("raised ValueError: a bug in before_send; the call goes on" in m for m in messages)
    assert any("raised KeyError: 'a bug in after_reply'" in m for m in messages)


@pytest.mark.parametrize(
    ("meta", "says"),
    [
        ({"n": 1}, "values must be strings"),
        ({f"k{n}": "v" for n in range(33)}, "more than 32 members"),
        ({"": "v"}, "keys must be"),
        ({"k": "v" * 1025}, "at most 1024 characters"),
    ],
    ids=["not-a-string", "too-many", "empty-key", "too-long"],
)
def test_invalid_meta_is_a_clear_error_and_nothing_is_sent(
    redis_url: str, redis_connection: redis.Redis, twin: Twin, meta: dict[str, Any], says: str
) -> None:
    recorder = Recorder(meta)
    client = twin.connect(redis_url, timeout=5, middleware=[recorder])
    with pytest.raises(ValueError, match=f"middleware set an invalid meta: .*{says}"):
        client.proxy("nobody").anything()
    assert redis_connection.llen("rpc:queue:{nobody}") == 0
    assert isinstance(recorder.replies[0][2], ValueError)


def test_middleware_must_be_middleware(redis_url: str, twin: Twin) -> None:
    with pytest.raises(TypeError, match="Middleware instances"):
        twin.cls(redis_url, middleware=[object()])  # type: ignore[list-item]


def test_no_client_hooks_means_no_hook_work(redis_url: str, twin: Twin) -> None:
    class WorkerOnly(Middleware):
        def before_call(self, call: CallContext) -> None:
            raise AssertionError("a worker hook never runs in a client")

    for middleware in ([], [WorkerOnly()]):
        client = twin.connect(redis_url, middleware=middleware)
        assert client.settings.hooks is None  # the call path skips hooks entirely
    assert twin.connect(redis_url, middleware=[Recorder()]).settings.hooks is not None


def test_a_client_hooks_token_passes_a_real_workers_check(redis_url: str, twin: Twin) -> None:
    """End to end: the meta a client hook adds reaches an rpc-worker process's hook."""
    args = ["services.calculator", "--redis-url", redis_url]
    args += ["--middleware", "services.middleware:SharedToken"]
    env = {**os.environ, "RPC_SHARED_TOKEN": "s3cret"}
    with WorkerProcess(args, cwd=REPOSITORY, env=env):
        client = twin.connect(redis_url, timeout=5, middleware=[SharedToken("s3cret")])
        assert client.proxy("calculator").add(1, 2) == 3
        with client.batch("calculator") as batch:
            product = batch.mul(2, 3)
        assert product.result() == 6
        stranger = twin.connect(redis_url, timeout=5, middleware=[SharedToken("wrong")])
        with pytest.raises(RpcError) as refused:
            stranger.proxy("calculator").add(1, 2)
        assert refused.value.code == UNAUTHORIZED
