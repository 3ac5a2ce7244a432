"""The embedded redis-server: started on a free port, stopped by pid, restartable."""

from __future__ import annotations

import pytest
import redis

from rpc_redis.embedded import EmbeddedRedis, EmbeddedRedisError, find_server_binary
from rpc_redis.testing import pid_alive


def test_start_serves_and_close_stops_by_pid_and_cleans_up() -> None:
    server = EmbeddedRedis().start()
    pid = server.pid
    assert pid is not None and pid_alive(pid)
    with redis.Redis.from_url(server.url) as connection:
        assert connection.ping()
        assert connection.info("server")["redis_version"] >= "6.2"  # BLMOVE, float timeouts
    directory = server.directory
    assert directory.is_dir()
    server.close()
    assert not pid_alive(pid)
    assert not directory.exists()


def test_kill_then_start_again_on_the_same_port() -> None:
    with EmbeddedRedis() as server:
        port, first_pid = server.port, server.pid
        server.kill()
        assert first_pid is not None and not pid_alive(first_pid)
        with pytest.raises(redis.exceptions.ConnectionError):
            redis.Redis.from_url(server.url, socket_connect_timeout=1).ping()
        server.start()
        assert server.port == port and server.pid != first_pid
        with redis.Redis.from_url(server.url) as connection:
            assert connection.ping()


def test_a_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPC_REDIS_SERVER", "/nonexistent/redis-server")
    assert find_server_binary() == "/nonexistent/redis-server"
    server = EmbeddedRedis()
    try:
        with pytest.raises(EmbeddedRedisError, match="cannot run /nonexistent/redis-server"):
            server.start()
    finally:
        server.close()


def test_a_server_that_cannot_start_reports_why() -> None:
    server = EmbeddedRedis(extra_args=("--no-such-option", "1"))
    try:
        with pytest.raises(EmbeddedRedisError, match="no-such-option"):
            server.start()
        assert server.pid is None or not pid_alive(server.pid)
    finally:
        server.close()


def test_a_server_with_a_password_becomes_ready_and_its_url_carries_it() -> None:
    """It never became ready: its readiness probe, refused for want of the password,
    took the refusal for a server still starting."""
    with EmbeddedRedis(extra_args=("--requirepass", "s3cret w/ symbols")) as server:
        assert server.password == "s3cret w/ symbols"
        with redis.Redis.from_url(server.url) as connection:
            assert connection.ping()
        bare = f"redis://{server.host}:{server.port}/0"
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis.from_url(bare).ping()


def test_a_password_can_be_given_by_name() -> None:
    with EmbeddedRedis(password="s3cret") as server:
        assert ":s3cret@" in server.url
        with redis.Redis.from_url(server.url) as connection:
            assert connection.config_get("requirepass") == {"requirepass": "s3cret"}
