"""Both clients against a real worker: results, typed errors, timeouts, notifications,
batches. Every test here runs against the sync Client and the AsyncClient (the
``twin`` fixture); what only the AsyncClient does is in test_aio.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from rpc_redis import (
    InternalError,
    InvalidParams,
    MethodNotFound,
    RpcConnectionError,
    RpcError,
    RpcTimeout,
    Service,
    Worker,
    WorkerThread,
)
from rpc_redis.client.policy import DEFAULT_MAX_CONNECTIONS, DEFAULT_TIMEOUT
from rpc_redis.embedded import EmbeddedRedis, free_port
from rpc_redis.testing import calls_in_flight, serve_in_thread, wait_until
from services.calculator import DIVISION_BY_ZERO
from services.calculator import service as calculator
from tests.client_twins import Twin, twin_fixture  # noqa: F401  (the fixture "twin")


@pytest.fixture
def client(redis_url: str, twin: Twin) -> Iterator[Any]:
    """A client of each kind, with the calculator served."""
    with serve_in_thread(calculator, redis_url):
        yield twin.connect(redis_url, timeout=5)


def test_positional_and_named_params(client: Any) -> None:
    calc = client.proxy("calculator")
    assert calc.add(1, 2) == 3
    assert isinstance(calc.add(1, 2), int)  # ints stay ints
    assert calc.add(a=1.5, b=2) == 3.5
    assert calc.sub(b=1, a=10) == 9
    assert calc.mul(3, 4) == 12
    assert calc.div(7, 2) == 3.5
    assert client.call("calculator", "mul", [6, 7]) == 42


def test_mixing_positional_and_named_params_is_refused_before_sending(client: Any) -> None:
    with pytest.raises(TypeError, match="positional or keyword"):
        client.proxy("calculator").add(1, b=2)


def test_client_call_and_method_names_that_are_not_identifiers(redis_url: str, twin: Twin) -> None:
    service = Service("dotted")

    @service.method(name="math.add")
    def add(a: int, b: int) -> int:
        return a + b

    with serve_in_thread(service, redis_url):
        client = twin.connect(redis_url, timeout=5)
        assert client.proxy("dotted").call("math.add", 2, 3) == 5
        assert client.call("dotted", "math.add", {"a": 2, "b": 3}) == 5
        with pytest.raises(MethodNotFound):
            client.proxy("dotted").add(1, 2)  # only the wire name exists


def test_application_error_carries_code_message_and_data(client: Any) -> None:
    with pytest.raises(RpcError) as caught:
        client.proxy("calculator").div(1, 0)
    assert caught.value.code == DIVISION_BY_ZERO
    assert caught.value.message == "Division by zero"
    assert caught.value.data == {"dividend": 1}


def test_unknown_method_and_wrong_params_raise_their_subclasses(client: Any) -> None:
    calc = client.proxy("calculator")
    with pytest.raises(MethodNotFound) as not_found:
        calc.pow(2, 3)
    assert not_found.value.code == -32601
    with pytest.raises(InvalidParams) as invalid:
        calc.add(1)
    assert invalid.value.code == -32602
    with pytest.raises(InvalidParams):
        calc.add(a=1, c=2)


def test_timeout_names_service_method_and_time_waited(client: Any) -> None:
    slow = client.proxy("calculator", timeout=0.3)
    started = time.monotonic()
    with pytest.raises(RpcTimeout) as caught:
        slow.sleep(2)
    waited = time.monotonic() - started
    assert 0.3 <= waited < 1.0
    assert (caught.value.service, caught.value.method) == ("calculator", "sleep")
    assert str(caught.value) == "no reply from service 'calculator' to 'sleep' within 0.300s"
    assert isinstance(caught.value, TimeoutError)
    # The client goes on working after a timeout; the late reply is not taken for another's.
    assert client.proxy("calculator").sub(5, 3) == 2


def test_timeout_against_a_service_nobody_serves(redis_url: str, twin: Twin) -> None:
    client = twin.connect(redis_url, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(RpcTimeout, match="'nobody'"):
        client.proxy("nobody").anything()
    assert time.monotonic() - started < 1.0


def test_per_proxy_timeout_overrides_the_client_default(redis_url: str, twin: Twin) -> None:
    with serve_in_thread(calculator, redis_url):
        client = twin.connect(redis_url, timeout=0.2)
        assert client.proxy("calculator", timeout=3).sleep(0.5) == 0.5
        assert client.call("calculator", "sleep", [0.5], timeout=3) == 0.5
        with client.batch("calculator", timeout=3) as batch:
            slept = batch.sleep(0.5)
        assert slept.result() == 0.5
        with pytest.raises(RpcTimeout):
            client.proxy("calculator").sleep(0.5)


# -- timeouts: always one, never a silent default ------------------------------------


def test_the_defaults_are_the_same_for_both_clients(redis_url: str, twin: Twin) -> None:
    client = twin.connect(redis_url)
    assert client.settings.timeout == DEFAULT_TIMEOUT == 10.0
    assert DEFAULT_MAX_CONNECTIONS == 64


def test_a_client_refuses_timeout_none_at_construction(redis_url: str, twin: Twin) -> None:
    with pytest.raises(ValueError, match=r"timeout must be a positive number of seconds.*None"):
        twin.cls(redis_url, timeout=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf")])
def test_a_client_refuses_a_timeout_that_is_not_positive(
    redis_url: str, twin: Twin, timeout: float
) -> None:
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        twin.cls(redis_url, timeout=timeout)


def test_timeout_none_on_a_proxy_a_call_or_a_batch_means_the_client_default(
    redis_url: str, twin: Twin
) -> None:
    client = twin.connect(redis_url, timeout=0.2)
    batch = client.batch("nobody", timeout=None)
    batch.anything()
    for send in (
        lambda: client.proxy("nobody", timeout=None).anything(),
        lambda: client.call("nobody", "anything", timeout=None),
        batch.send,
    ):
        started = time.monotonic()
        with pytest.raises(RpcTimeout) as caught:
            send()
        assert caught.value.waited == 0.2
        assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("timeout", [0, -0.5])
def test_a_timeout_of_zero_or_less_is_refused_at_once(
    redis_url: str, twin: Twin, timeout: float
) -> None:
    client = twin.connect(redis_url, timeout=5)
    message = "timeout must be a positive number of seconds"
    with pytest.raises(ValueError, match=message):
        client.proxy("nobody", timeout=timeout)
    with pytest.raises(ValueError, match=message):
        client.batch("nobody", timeout=timeout)
    started = time.monotonic()
    with pytest.raises(ValueError, match=message):
        client.call("nobody", "anything", timeout=timeout)
    assert time.monotonic() - started < 0.5  # refused, not waited out
    with redis.Redis.from_url(redis_url) as connection:
        assert connection.llen("rpc:queue:{nobody}") == 0  # nothing was sent


# -- notifications and batches -------------------------------------------------------


def test_notification_runs_the_method_and_writes_no_reply(redis_url: str, twin: Twin) -> None:
    received = threading.Event()
    service = Service("log")

    @service.method
    def log(text: str) -> str:
        assert text == "hello"
        received.set()
        return "nobody reads this"

    with serve_in_thread(service, redis_url) as worker:
        client = twin.connect(redis_url)
        assert client.proxy("log").notify.log("hello") is None
        assert received.wait(5)
        wait_until(lambda: worker.stats.notifications == 1)
        assert worker.stats.replied == 0
    with redis.Redis.from_url(redis_url) as connection:
        assert connection.keys("rpc:reply:*") == []


def test_batch_returns_each_outcome_in_order(client: Any) -> None:
    with client.batch("calculator") as batch:
        total = batch.add(1, 2)
        quotient = batch.div(1, 0)
        batch.notify.mul(5, 5)
        product = batch.call("mul", a=3, b=4)
    assert total.result() == 3
    assert product.result() == 12
    with pytest.raises(RpcError) as caught:
        quotient.result()
    assert caught.value.code == DIVISION_BY_ZERO

    batch = client.batch("calculator")
    batch.add(2, 2)
    batch.nope()
    outcomes = batch.send()
    assert outcomes[0] == 4
    assert isinstance(outcomes[1], MethodNotFound)


def test_batch_results_are_unavailable_before_sending_and_batch_is_single_use(
    client: Any,
) -> None:
    batch = client.batch("calculator")
    pending = batch.add(1, 1)
    with pytest.raises(RuntimeError, match="not been sent"):
        pending.result()
    batch.send()
    assert pending.result() == 2
    with pytest.raises(RuntimeError, match="has been sent"):
        batch.add(1, 1)


def test_batch_of_only_notifications_is_sent_without_waiting(redis_url: str, twin: Twin) -> None:
    seen: list[int] = []
    done = threading.Event()
    service = Service("counter")

    @service.method
    def count(n: int) -> None:
        seen.append(n)
        if len(seen) == 3:
            done.set()

    with serve_in_thread(service, redis_url):
        client = twin.connect(redis_url)
        with client.batch("counter") as batch:
            for n in range(3):
                batch.notify.count(n)
        assert done.wait(5)
        only_notifications = client.batch("counter")
        only_notifications.notify.count(3)
        assert only_notifications.send() == []
    assert sorted(seen)[:3] == [0, 1, 2]


def test_empty_batch_is_refused(client: Any) -> None:
    with pytest.raises(ValueError, match="empty"):
        client.batch("calculator").send()


def test_custom_prefix_and_queue(redis_url: str, twin: Twin) -> None:
    with serve_in_thread(calculator, redis_url, prefix="myapp"):
        client = twin.connect(redis_url, prefix="myapp", timeout=5)
        assert client.proxy("calculator").add(2, 2) == 4
        with redis.Redis.from_url(redis_url) as connection:
            # The worker is blocked on myapp:queue:{calculator}, not rpc:queue:{calculator}.
            assert connection.llen("rpc:queue:{calculator}") == 0
    with serve_in_thread(calculator, redis_url, queue="jobs"):
        client = twin.connect(redis_url, timeout=5)
        assert client.proxy("calculator", queue="jobs").mul(2, 5) == 10


# -- what handlers do, as a caller sees it --------------------------------------------


def test_sync_and_async_handlers_both_work(redis_url: str, twin: Twin) -> None:
    service = Service("mixed")

    @service.method
    def sync_echo(value: object) -> object:
        return value

    @service.method
    async def async_echo(value: object) -> object:
        return value

    document = {"list": [1, 2.5, "x", None, True], "nested": {"a": {"b": []}}}
    with serve_in_thread(service, redis_url):
        mixed = twin.connect(redis_url, timeout=5).proxy("mixed")
        assert mixed.sync_echo(document) == document
        assert mixed.async_echo(document) == document


def test_handler_exception_becomes_internal_error_with_type_and_message(
    redis_url: str, twin: Twin
) -> None:
    service = Service("faulty")

    @service.method
    def explode() -> None:
        raise KeyError("missing")

    with serve_in_thread(service, redis_url):
        with pytest.raises(InternalError) as caught:
            twin.connect(redis_url, timeout=5).proxy("faulty").explode()
    assert caught.value.code == -32603
    assert caught.value.data == {"type": "KeyError", "message": "'missing'"}


def test_debug_mode_adds_the_traceback(redis_url: str, twin: Twin) -> None:
    service = Service("faulty")

    @service.method
    def explode() -> None:
        raise ValueError("boom")

    with serve_in_thread(service, redis_url, debug=True):
        with pytest.raises(InternalError) as caught:
            twin.connect(redis_url, timeout=5).proxy("faulty").explode()
    assert caught.value.data["type"] == "ValueError"
    assert "Traceback" in caught.value.data["traceback"]
    assert 'raise ValueError("boom")' in caught.value.data["traceback"]


def test_only_decorated_functions_are_reachable(client: Any) -> None:
    import services.calculator as module

    assert hasattr(module, "RpcError")  # importable names are not methods
    with pytest.raises(MethodNotFound):
        client.proxy("calculator").RpcError()
    with pytest.raises(MethodNotFound):
        client.proxy("calculator").call("__init__")


def test_shared_client_across_threads(client: Any) -> None:
    calc = client.proxy("calculator")
    errors: list[BaseException] = []

    def caller(offset: int) -> None:
        try:
            for i in range(20):
                assert calc.add(offset, i) == offset + i
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(n * 100,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# -- Redis going away --------------------------------------------------------------------


def client_connections(url: str, name: str) -> int:
    with redis.Redis.from_url(url) as connection:
        return sum(1 for client in connection.client_list() if client.get("name") == name)


def test_closing_releases_every_connection(client: Any, redis_url: str) -> None:
    assert client.proxy("calculator").add(1, 1) == 2
    assert client_connections(redis_url, client.client_name) >= 1
    client.close()
    assert client_connections(redis_url, client.client_name) == 0


def test_client_never_hangs_when_redis_dies_mid_call(
    fresh_redis: EmbeddedRedis, twin: Twin
) -> None:
    with WorkerThread(Worker(calculator, fresh_redis.url)):
        client = twin.connect(fresh_redis.url, timeout=3)
        result: dict[str, object] = {}

        def call() -> None:
            started = time.monotonic()
            try:
                client.proxy("calculator").sleep(2)
            except BaseException as exc:
                result["error"] = exc
            result["waited"] = time.monotonic() - started

        caller = threading.Thread(target=call)
        caller.start()
        queue = "rpc:queue:{calculator}"
        wait_until(lambda: calls_in_flight(fresh_redis.url, client.client_name, queue) == 1)
        fresh_redis.kill()
        caller.join(5)
        assert not caller.is_alive()
        assert isinstance(result["error"], (RpcConnectionError, RpcTimeout))
        assert result["waited"] < 3.3  # type: ignore[operator]
        client.close()
        fresh_redis.start()  # let the worker shut down against a live server


def test_connection_error_is_clear_when_redis_is_down(twin: Twin) -> None:
    port = free_port()
    client = twin.connect(f"redis://127.0.0.1:{port}/0", timeout=1)
    started = time.monotonic()
    with pytest.raises(RpcConnectionError) as caught:
        client.proxy("calculator").add(1, 2)
    assert time.monotonic() - started < 1.5
    assert str(caught.value).startswith(f"Redis at redis://127.0.0.1:{port}/0 failed during ")
    assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)


def test_the_first_call_after_a_redis_restart_succeeds(
    fresh_redis: EmbeddedRedis, twin: Twin
) -> None:
    with WorkerThread(Worker(calculator, fresh_redis.url)):
        calc = twin.connect(fresh_redis.url, timeout=5).proxy("calculator")
        assert calc.add(1, 2) == 3
        fresh_redis.kill()
        fresh_redis.start()
        # The pooled connections died with the old server; none is handed out stale.
        assert calc.add(2, 3) == 5
