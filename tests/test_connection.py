"""Reading responses against a real Redis: a read that times out leaves nothing behind."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio
import redis.exceptions

from rpc_redis.connection import (
    async_pool,
    pack_commands,
    parse_location,
    read_responses,
    read_responses_sync,
    redact_url,
    send_commands,
    send_commands_sync,
    sync_pool,
)
from rpc_redis.errors import RpcConfigurationError


def test_an_async_read_past_its_timeout_raises_and_the_late_response_is_never_read(
    redis_url: str,
) -> None:
    """The BLPOP's nil, a second later, must not be read as the PING's answer."""

    async def scenario() -> list[object]:
        connection = async_pool(redis_url, max_connections=1, socket_timeout=None)
        receiving = connection.make_connection()  # type: ignore[no-untyped-call]
        await send_commands(receiving, [("BLPOP", "nothing:here", 1)])
        with pytest.raises(redis.exceptions.TimeoutError):
            await read_responses(receiving, 1, 0.1)
        assert not receiving.is_connected
        await send_commands(receiving, [("PING",)])  # on a fresh connection
        responses = await read_responses(receiving, 1, 5)
        await receiving.disconnect()
        return responses

    assert asyncio.run(scenario()) == [b"PONG"]


def test_a_sync_read_past_its_timeout_raises_and_the_late_response_is_never_read(
    redis_url: str,
) -> None:
    connection = sync_pool(redis_url, max_connections=1, socket_timeout=None).make_connection()
    try:
        send_commands_sync(connection, [("BLPOP", "nothing:here", 1)])
        with pytest.raises(redis.exceptions.TimeoutError):
            read_responses_sync(connection, 1, 0.1)
        send_commands_sync(connection, [("PING",)])
        assert read_responses_sync(connection, 1, 5) == [b"PONG"]
    finally:
        connection.disconnect()  # type: ignore[no-untyped-call]


def test_error_replies_come_back_in_their_place(redis_url: str) -> None:
    async def scenario() -> list[object]:
        pool = async_pool(redis_url, max_connections=1, socket_timeout=None)
        connection = pool.make_connection()  # type: ignore[no-untyped-call]
        commands = [("SET", "a:string", "x"), ("LPUSH", "a:string", "y"), ("GET", "a:string")]
        await send_commands(connection, commands)
        responses = await read_responses(connection, 3, 5)
        await connection.disconnect()
        return responses

    ok, refused, value = asyncio.run(scenario())
    assert (ok, value) == (b"OK", b"x")
    assert isinstance(refused, redis.exceptions.ResponseError)
    assert "WRONGTYPE" in str(refused)


@pytest.mark.parametrize(
    "commands",
    [
        [("PING",)],
        [("BLPOP", "rpc:queue:{a}", "rpc:queue:{b}", 5.0), ("LPOP", "rpc:queue:{a}", 63)],
        [("EVAL", "return 1", 1, "rpc:reply:é", b"\x00\xff" * 3000, 60000)],
        [("RPUSH", "q", "naïve ☃", 1.5, -2, b"")],
    ],
)
def test_commands_are_packed_as_redis_py_packs_them(commands: list[tuple[object, ...]]) -> None:
    connection = async_pool("redis://127.0.0.1:1", max_connections=1).make_connection()  # type: ignore[no-untyped-call]
    ours = pack_commands(connection, commands)  # type: ignore[arg-type]
    assert ours == b"".join(connection.pack_commands(commands))


def test_a_connection_with_another_encoding_packs_its_own_way() -> None:
    pool = async_pool("redis://127.0.0.1:1", max_connections=1, encoding="latin-1")
    connection = pool.make_connection()  # type: ignore[no-untyped-call]
    packed = pack_commands(connection, [("SET", "k", "é")])
    assert b"".join(packed) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n\xe9\r\n"


def test_a_value_redis_cannot_take_is_a_data_error() -> None:
    connection = async_pool("redis://127.0.0.1:1", max_connections=1).make_connection()  # type: ignore[no-untyped-call]
    with pytest.raises(redis.exceptions.DataError):
        pack_commands(connection, [("SET", "k", None)])


# -- where Redis is: every URL form, and a client or pool the user built ----------------


@pytest.mark.parametrize(
    ("url", "kind", "addresses", "service_name", "options"),
    [
        ("redis://u:p@h:1/2", "node", (), None, {}),
        ("unix:///run/redis.sock?db=1", "node", (), None, {}),
        (
            "redis+sentinel://u:p%40ss@s1:26379,s2:26380/primary/3?sentinel_password=sp",
            "sentinel",
            (("s1", 26379), ("s2", 26380)),
            "primary",
            {"username": "u", "password": "p@ss", "db": 3},
        ),
        ("redis+sentinel://s1/primary", "sentinel", (("s1", 26379),), "primary", {"db": 0}),
        (
            "redis+cluster://:secret@n1:7000,n2:7001?socket_timeout=2",
            "cluster",
            (("n1", 7000), ("n2", 7001)),
            None,
            {"password": "secret", "socket_timeout": 2.0},
        ),
    ],
)
def test_every_url_form_is_read_by_one_function(
    url: str,
    kind: str,
    addresses: tuple[tuple[str, int], ...],
    service_name: str | None,
    options: dict[str, object],
) -> None:
    location = parse_location(url)
    assert (location.kind, location.addresses, location.service_name) == (
        kind,
        addresses,
        service_name,
    )
    assert location.options == options
    if kind == "sentinel" and "sentinel_password" in url:
        assert location.sentinel_options == {"password": "sp"}
    assert "p@ss" not in location.where and "secret" not in location.where


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h:1", "the scheme must be one of"),
        ("redis+sentinel://s1:26379", "name the primary"),
        ("redis+cluster://n1:7000/1", "only database 0"),
        ("redis+cluster://n1:port", "bad port"),
        ("redis+cluster://:pw@/", "no host:port"),
        ("redis://h:notaport", "Port could not be cast"),
    ],
)
def test_a_url_that_cannot_be_read_is_a_configuration_error_naming_it_redacted(
    url: str, says: str
) -> None:
    with pytest.raises(RpcConfigurationError, match=says) as raised:
        parse_location(url.replace("//", "//:pw@", 1) if "@" not in url else url)
    assert "pw" not in str(raised.value).replace(":***@", "")


def test_a_multi_host_url_is_redacted_in_every_place_it_holds_a_password() -> None:
    url = "redis+sentinel://user:p/w@s1:1,s2:2/primary/0?sentinel_password=x&socket_timeout=1"
    assert redact_url(url) == (
        "redis+sentinel://user:***@s1:1,s2:2/primary/0?sentinel_password=***&socket_timeout=1"
    )


def test_clients_and_a_worker_take_a_client_or_pool_the_user_built(redis_url: str) -> None:
    from rpc_redis import AsyncClient, Client, Worker
    from rpc_redis.testing import WorkerThread
    from services.calculator import service as calculator

    async def add_async() -> object:
        given = redis.asyncio.Redis.from_url(redis_url)
        async with AsyncClient(redis=given, timeout=5) as client:
            result = await client.proxy("calculator").add(2, 3)
        await given.aclose()
        return result

    worker_redis = redis.asyncio.Redis.from_url(redis_url)
    with WorkerThread(Worker(calculator, redis=worker_redis)) as worker:
        assert worker.target.where.startswith("redis://")
        with redis.Redis.from_url(redis_url) as given, Client(redis=given, timeout=5) as client:
            assert client.proxy("calculator").add(1, 2) == 3
            assert client.settings.where.startswith("redis://")
        pool = redis.ConnectionPool.from_url(redis_url)
        with Client(redis=pool, timeout=5) as client:
            assert client.proxy("calculator").add(1, 1) == 2
        assert asyncio.run(add_async()) == 5
    with pytest.raises(TypeError, match="not both"):
        Client(redis_url, redis=redis.Redis.from_url(redis_url))
    with pytest.raises(TypeError, match="redis-py client"):
        Client(redis="redis://localhost")


def test_a_unix_socket_url_serves_calls(unix_redis: object) -> None:
    from rpc_redis import Client
    from rpc_redis.testing import serve_in_thread
    from services.calculator import service as calculator

    url = unix_redis.unix_url  # type: ignore[attr-defined]
    with serve_in_thread(calculator, url), Client(url, timeout=5) as client:
        assert client.proxy("calculator").add(1, 2) == 3
