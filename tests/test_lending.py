"""The clients' connections between calls (connection/lending.py): kept for the next
call, replaced when Redis closed one meanwhile (both twins); and for the sync Client,
never shared with a forked child, given back at once (with its own socket timeout) to a
pool the user gave, and each step of a call bounded by the call's own time left,
whatever the call before it on the same connection waited."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
import redis

from rpc_redis import Client, RpcTimeout
from rpc_redis.embedded import EmbeddedRedis
from tests.client_twins import Twin, twin_fixture  # noqa: F401  (the fixture "twin")

NAME = "lending-test"


@pytest.fixture
def admin(fresh_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(fresh_redis.url) as connection:
        yield connection


def named_ids(admin: redis.Redis) -> list[int]:
    """The ids of the connections the test's clients made (named NAME)."""
    return [int(c["id"]) for c in admin.client_list() if c.get("name") == NAME]


def test_calls_one_after_another_go_on_one_connection(
    fresh_redis: EmbeddedRedis, admin: redis.Redis, twin: Twin
) -> None:
    client = twin.connect(fresh_redis.url, timeout=5, client_name=NAME)
    ids = {client.emit("orders", {"n": n}) for n in range(50)}
    assert len(ids) == 50
    assert len(named_ids(admin)) == 1
    assert admin.xlen("rpc:stream:{orders}") == 50


def test_a_connection_redis_closed_while_it_waited_is_replaced_at_the_next_call(
    fresh_redis: EmbeddedRedis, admin: redis.Redis, twin: Twin
) -> None:
    client = twin.connect(fresh_redis.url, timeout=5, client_name=NAME)
    client.emit("orders", {"n": 1})
    [first] = named_ids(admin)
    admin.client_kill_filter(_id=first)
    client.emit("orders", {"n": 2})  # not an RpcConnectionError: a new connection
    [second] = named_ids(admin)
    assert second != first
    assert admin.xlen("rpc:stream:{orders}") == 2


def test_a_forked_child_calls_on_a_connection_of_its_own(
    fresh_redis: EmbeddedRedis, admin: redis.Redis
) -> None:
    with Client(fresh_redis.url, timeout=5, client_name=NAME) as client:
        client.emit("orders", {"by": "parent"})
        [parents] = named_ids(admin)
        said, say = os.pipe()  # child to parent: it has emitted
        looked, look = os.pipe()  # parent to child: closed once the parent has looked
        child = os.fork()
        if child == 0:  # pragma: no cover (the child's own process)
            code = 1
            try:
                client.emit("orders", {"by": "child"})
                os.write(say, b"emitted")
                os.close(look)
                os.read(looked, 1)  # the end: the parent has looked
                code = 0
            finally:
                os._exit(code)
        os.close(say)
        os.close(looked)
        try:
            assert os.read(said, 7) == b"emitted"
            ids = named_ids(admin)
            assert parents in ids and len(ids) == 2  # the child's is another connection
        finally:
            os.close(look)
            os.close(said)
            _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        client.emit("orders", {"by": "parent, after"})  # its connection is still whole
        assert named_ids(admin)[0] == parents
    assert admin.xlen("rpc:stream:{orders}") == 3


def test_a_pool_the_user_gave_gets_each_connection_back_after_each_call(
    fresh_redis: EmbeddedRedis,
) -> None:
    pool = redis.ConnectionPool.from_url(fresh_redis.url, max_connections=1)
    with Client(redis=pool, timeout=5) as client, redis.Redis(connection_pool=pool) as theirs:
        for n in range(3):
            client.emit("orders", {"n": n})
            assert theirs.ping()  # the pool's one connection was back in it
        assert theirs.xlen("rpc:stream:{orders}") == 3
    pool.disconnect()


def test_a_short_call_after_a_long_one_waits_no_longer_than_its_own_timeout(
    fresh_redis: EmbeddedRedis, admin: redis.Redis
) -> None:
    with Client(fresh_redis.url, timeout=60) as client:
        client.emit("orders", {"n": 1})  # its reads were bounded by a minute
        admin.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")  # XADD waits
        try:
            started = time.monotonic()
            with pytest.raises(RpcTimeout):
                client.emit("orders", {"n": 2}, timeout=0.2)
            assert time.monotonic() - started < 1.5
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")


def test_a_long_call_after_a_short_one_waits_its_whole_timeout(
    fresh_redis: EmbeddedRedis,
) -> None:
    """No worker serves "absent": each call waits its timeout out, for a reply that
    never comes, then Redis's BLPOP says so; the long one must not be cut short."""
    with Client(fresh_redis.url, timeout=60) as client:
        with pytest.raises(RpcTimeout):
            client.call("absent", "method", timeout=0.1)
        started = time.monotonic()
        with pytest.raises(RpcTimeout, match=r"within 1\.000s"):
            client.call("absent", "method", timeout=1.0)
        assert time.monotonic() - started >= 1.0


def test_a_call_redis_is_slow_at_each_step_of_still_ends_within_its_timeout_and_grace(
    fresh_redis: EmbeddedRedis, admin: redis.Redis
) -> None:
    """The push waits out most of the timeout; the wait for the reply then gets only
    what is left, not a timeout of its own."""
    with Client(fresh_redis.url, timeout=1.0) as client:
        client.emit("orders", {"n": 1})
        admin.execute_command("CLIENT", "PAUSE", 900, "WRITE")  # the RPUSH waits 0.9 s
        started = time.monotonic()
        with pytest.raises(RpcTimeout):
            client.call("absent", "method", timeout=1.0)
        assert time.monotonic() - started < 1.0 + 0.25 + 0.1


def test_a_pool_the_user_gave_gets_its_connections_back_with_its_own_socket_timeout(
    fresh_redis: EmbeddedRedis,
) -> None:
    pool = redis.ConnectionPool.from_url(fresh_redis.url, max_connections=1)  # no timeout
    with Client(redis=pool, timeout=0.3) as client, redis.Redis(connection_pool=pool) as theirs:
        client.emit("orders", {"n": 1})
        started = time.monotonic()
        assert theirs.blpop(["nothing:here"], timeout=1) is None  # not cut at 0.3 s
        assert time.monotonic() - started >= 1.0
    pool.disconnect()
