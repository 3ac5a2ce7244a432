"""Reading responses against a real Redis: a read that times out leaves nothing behind."""

from __future__ import annotations

import asyncio

import pytest
import redis.exceptions

from rpc_redis.connection import (
    async_pool,
    pack_commands,
    read_responses,
    read_responses_sync,
    send_commands,
    send_commands_sync,
    sync_pool,
)


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
