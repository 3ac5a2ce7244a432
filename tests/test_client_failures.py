"""Both clients when Redis fails them: every failure leaves a call as one of the
library's own exceptions, caused by Redis's; configuration errors are said to be
(never a timeout that blames the service); no URL shows its password; and a
connection an error interrupted is never used again half-read."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from rpc_redis import RpcConnectionError, RpcRedisError, RpcTimeout
from rpc_redis.connection import redact_url
from rpc_redis.embedded import EmbeddedRedis, free_port
from rpc_redis.errors import RpcConfigurationError
from rpc_redis.protocol import decode_message
from rpc_redis.testing import serve_in_thread, wait_until
from services.calculator import service as calculator
from tests.client_twins import Twin, twin_fixture  # noqa: F401  (the fixture "twin")

PASSWORD = "s3cret-pw"


# -- a push Redis refuses ----------------------------------------------------------------


def test_a_push_redis_refuses_is_an_rpc_redis_error_caused_by_redis(
    redis_url: str, redis_connection: redis.Redis, twin: Twin
) -> None:
    redis_connection.set("rpc:queue:{broken}", "x")  # RPUSH onto it: WRONGTYPE
    client = twin.connect(redis_url, timeout=10)
    for send in (
        lambda: client.call("broken", "add", [1, 2]),
        lambda: client.proxy("broken").notify.add(1, 2),
    ):
        started = time.monotonic()
        with pytest.raises(RpcRedisError) as caught:
            send()
        assert time.monotonic() - started < 1  # at once, not at the call's timeout
        assert type(caught.value) is RpcRedisError  # refused: not an outage
        assert str(caught.value).startswith(
            f"Redis at {redis_url} refused the call to rpc:queue:{{broken}}: WRONGTYPE"
        )
        assert isinstance(caught.value.__cause__, redis.exceptions.ResponseError)


def test_after_a_refused_push_the_next_call_on_the_same_connection_works(
    redis_url: str, redis_connection: redis.Redis, twin: Twin
) -> None:
    """The refused RPUSH's BLPOP was still unanswered: the connection that carried it
    must not go back to the pool half-read (the next call read that BLPOP's answer)."""
    redis_connection.set("rpc:queue:{broken}", "x")
    fewest = 1 if twin.kind == "sync" else 2  # an AsyncClient listens on one, sends on one
    with serve_in_thread(calculator, redis_url):
        client = twin.connect(redis_url, timeout=2, max_connections=fewest)
        calc = client.proxy("calculator")
        for n in range(3):
            with pytest.raises(RpcRedisError, match="WRONGTYPE"):
                client.call("broken", "add", [1, 2])
            assert calc.add(n, 1) == n + 1
            with client.batch("calculator") as batch:
                doubled = batch.mul(n, 2)
            assert doubled.result() == n * 2


def test_a_notification_redis_does_not_take_in_time_times_out(
    fresh_redis: EmbeddedRedis, twin: Twin
) -> None:
    client = twin.connect(fresh_redis.url, timeout=60)
    with redis.Redis.from_url(fresh_redis.url) as connection:
        connection.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")  # RPUSH waits
        try:
            notify = client.proxy("calculator", timeout=0.2).notify
            started = time.monotonic()
            with pytest.raises(RpcTimeout, match=r"'calculator' to 'notification' within 0\.200s"):
                notify.add(1, 1)
            assert time.monotonic() - started < 1.5
        finally:
            connection.execute_command("CLIENT", "UNPAUSE")


def test_only_the_librarys_own_exceptions_leave_a_call(redis_url: str, twin: Twin) -> None:
    # Redis refuses this name when the connection is made (CLIENT SETNAME).
    client = twin.connect(redis_url, timeout=10, client_name="has spaces")
    started = time.monotonic()
    with pytest.raises(RpcRedisError) as caught:
        client.proxy("calculator").add(1, 2)
    assert time.monotonic() - started < 1
    assert "Client names cannot contain spaces" in str(caught.value)
    assert isinstance(caught.value.__cause__, redis.exceptions.ResponseError)


# -- no password in any message -------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{PASSWORD}@127.0.0.1:{{port}}/0",
        f"redis://127.0.0.1:{{port}}/0?password={PASSWORD}",
        f"redis://alice:{PASSWORD}@127.0.0.1:{{port}}/0",
    ],
    ids=["password", "password-parameter", "username-and-password"],
)
def test_a_connection_error_never_shows_the_password(url: str, twin: Twin) -> None:
    url = url.format(port=free_port())
    client = twin.connect(url, timeout=1)
    with pytest.raises(RpcConnectionError) as caught:
        client.proxy("calculator").add(1, 2)
    message = str(caught.value)
    assert PASSWORD not in message and PASSWORD not in repr(caught.value.args)
    assert message.startswith(f"Redis at {redact_url(url)} failed during the call to ")
    assert "***" in redact_url(url)


# -- configuration errors: said to be, at once ---------------------------------------------

USER_PASSWORD = "user-pw"
DENIED = ("rpush", "blpop", "lpop")


@pytest.fixture(scope="module")
def guarded_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server that wants a password, with users each denied one command."""
    with EmbeddedRedis() as server:
        with redis.Redis(host=server.host, port=server.port) as admin:
            for command in DENIED:
                admin.execute_command(
                    "ACL", "SETUSER", f"no-{command}", "on", f">{USER_PASSWORD}", "~*", "+@all",
                    f"-{command}",
                )  # fmt: skip
            admin.config_set("requirepass", PASSWORD)
        yield server


def guarded_url(server: EmbeddedRedis, credentials: str, database: int = 0) -> str:
    at = f"{credentials}@" if credentials else ""
    return f"redis://{at}{server.host}:{server.port}/{database}"


CONFIGURATION_ERRORS = {
    # name: (credentials, database, what the message says)
    "wrong-password": (":wrong-pw", 0, "invalid username-password pair"),
    "missing-password": ("", 0, r"(?i)auth"),
    "unknown-user": (f"nobody:{USER_PASSWORD}", 0, "invalid username-password pair"),
    "missing-database": (f":{PASSWORD}", 99, "DB index is out of range"),
    "rpush-forbidden": (
        f"no-rpush:{USER_PASSWORD}",
        0,
        "no permissions to run the 'rpush' command",
    ),
    "blpop-forbidden": (
        f"no-blpop:{USER_PASSWORD}",
        0,
        "no permissions to run the 'blpop' command",
    ),
}


@pytest.mark.parametrize("case", CONFIGURATION_ERRORS)
def test_a_configuration_error_is_said_to_be_one(
    guarded_redis: EmbeddedRedis, twin: Twin, case: str
) -> None:
    credentials, database, says = CONFIGURATION_ERRORS[case]
    url = guarded_url(guarded_redis, credentials, database)
    client = twin.connect(url, timeout=10)
    started = time.monotonic()
    with pytest.raises(RpcConfigurationError, match=says) as caught:
        client.proxy("calculator").add(1, 2)
    assert time.monotonic() - started < 2  # not waited out as a timeout
    message = str(caught.value)
    assert message.startswith(f"Redis at {redact_url(url)} refused ")
    assert PASSWORD not in message and USER_PASSWORD not in message
    assert isinstance(caught.value.__cause__, redis.exceptions.RedisError)


def test_the_guarded_server_serves_whoever_has_the_password(
    guarded_redis: EmbeddedRedis, twin: Twin
) -> None:
    """The fixture above refuses nothing else: each error is the one its case names."""
    url = guarded_url(guarded_redis, f":{PASSWORD}")
    with serve_in_thread(calculator, url):
        assert twin.connect(url, timeout=5).proxy("calculator").add(1, 2) == 3


@pytest.fixture
def tls_peer() -> Iterator[int]:
    """A TLS endpoint whose handshake always fails (it has no certificate to offer):
    the embedded redis-server is built without TLS. Its port; stopped after the test."""
    listener = socket.create_server(("127.0.0.1", 0))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            try:
                with context.wrap_socket(connection, server_side=True) as tls:
                    tls.recv(1)
            except OSError:  # ssl.SSLError: no shared cipher, as intended
                pass

    server = threading.Thread(target=serve)
    server.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        server.join(5)


def test_a_failed_tls_handshake_is_a_configuration_error(tls_peer: int, twin: Twin) -> None:
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_peer}/0"
    client = twin.connect(url, timeout=10)
    started = time.monotonic()
    with pytest.raises(RpcConfigurationError, match="SSL") as caught:
        client.proxy("calculator").add(1, 2)
    assert time.monotonic() - started < 2
    assert str(caught.value).startswith(f"Redis at {redact_url(url)} refused ")
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    "url", ["redis://localhost:notaport", f"redis://:{PASSWORD}@localhost:notaport/0"]
)
def test_a_malformed_url_is_refused_at_construction(twin: Twin, url: str) -> None:
    with pytest.raises(RpcConfigurationError, match="bad Redis URL") as caught:
        twin.cls(url)
    assert redact_url(url) in str(caught.value)
    assert PASSWORD not in str(caught.value)


# -- what CLIENT LIST shows ------------------------------------------------------------------


def test_no_client_name_reveals_a_reply_key(
    redis_url: str, redis_connection: redis.Redis, twin: Twin
) -> None:
    """Anyone who may run CLIENT LIST sees the names; a reply key is for the worker only."""
    client = twin.connect(redis_url, timeout=2)
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            client.call("nobody", "anything")
        except RpcTimeout as exc:
            outcome["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(lambda: redis_connection.llen("rpc:queue:{nobody}") == 1, what="a call in flight")
    incoming = decode_message(redis_connection.lindex("rpc:queue:{nobody}", 0))  # type: ignore[arg-type]
    reply_to = incoming.reply_to  # type: ignore[union-attr]
    assert reply_to is not None
    token = reply_to.rsplit(":", 1)[-1]
    names = [entry.get("name", "") for entry in redis_connection.client_list()]
    assert client.client_name in names  # the client's own connections are named...
    assert not any(token in name for name in names)  # ...but not after its reply key
    caller.join(5)
    assert isinstance(outcome.get("error"), RpcTimeout)
