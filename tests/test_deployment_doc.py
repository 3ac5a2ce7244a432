"""docs/deployment.md, run: every ACL line pasted into a real redis-cli, and each user
doing its job (a worker, plain and reliable; both clients; rpc-admin) and nothing
else; a bare request's reply key inside and outside the worker's keys; the page's
Python examples against real servers (TLS through the proxy, mutual TLS)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from rpc_redis import AsyncClient, Client, protocol
from rpc_redis.embedded import EmbeddedRedis, find_cli_binary
from rpc_redis.testing import WorkerProcess, serve_in_thread, wait_until
from rpc_redis.topologies import TlsFiles, TlsRedis
from services.calculator import service as calculator
from tests.conftest import REPOSITORY
from tests.test_readme import EXAMPLE_URL, python_blocks, with_checks

PAGE = REPOSITORY / "docs" / "deployment.md"
PASSWORDS = {"rpc-worker": "worker-secret", "rpc-client": "client-secret",
             "rpc-admin": "admin-secret"}  # fmt: skip


def acl_blocks(path: Path = PAGE) -> list[list[str]]:
    """The page's ``text`` blocks made of ACL SETUSER lines, each a list of lines."""
    blocks = re.findall(r"```text\n(.*?)```", path.read_text(), flags=re.DOTALL)
    return [block.splitlines() for block in blocks if block.startswith("ACL SETUSER")]


def single_node_lines() -> list[str]:
    """The worker's, the client's and rpc-admin's lines for one server (or Sentinel)."""
    return [line for block in acl_blocks() if len(block) == 1 for line in block]


def cluster_lines() -> list[str]:
    [block] = [block for block in acl_blocks() if len(block) == 3]
    return block


def user_url(server: EmbeddedRedis, user: str) -> str:
    return f"redis://{user}:{PASSWORDS[user]}@{server.host}:{server.port}/0"


def test_every_acl_line_starts_with_acl_setuser_and_sets_a_password() -> None:
    lines = [line for block in acl_blocks() for line in block]
    assert len(lines) == 6
    for line in lines:
        words = line.split()
        assert words[:2] == ["ACL", "SETUSER"] and words[2] in PASSWORDS
        assert f">{PASSWORDS[words[2]]}" in words and "resetkeys" in words and "-@all" in words


def test_the_acl_lines_pasted_into_redis_cli_give_each_role_what_it_needs_and_no_more(
    fresh_redis: EmbeddedRedis,
) -> None:
    cli = find_cli_binary()
    assert cli is not None
    pasted = subprocess.run(
        [cli, "-h", fresh_redis.host, "-p", str(fresh_redis.port)],
        input="\n".join(single_node_lines()) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert pasted.stdout.split() == ["OK", "OK", "OK"], pasted.stdout + pasted.stderr

    worker_url = user_url(fresh_redis, "rpc-worker")
    client_url = user_url(fresh_redis, "rpc-client")
    admin_url = user_url(fresh_redis, "rpc-admin")
    env = {**os.environ, "RPC_REDIS_URL": worker_url}
    plain = WorkerProcess(["services.calculator"], cwd=REPOSITORY, env=env)
    reliable = WorkerProcess(
        ["tests.slow_service", "--reliable", "--heartbeat-interval", "0.3"],
        cwd=REPOSITORY, env=env,
    )  # fmt: skip
    with plain, reliable:
        with Client(client_url, timeout=5) as client:
            assert client.proxy("calculator").add(1, 2) == 3
            assert client.proxy("slow").fast(7) == 7  # BLMOVE, MULTI, LREM, heartbeats...
            with client.batch("calculator") as batch:
                total = batch.add(2, 2)
            assert total.result() == 4

        async def add_async() -> object:
            async with AsyncClient(client_url, timeout=5) as client:
                return await client.proxy("calculator").add(3, 4)

        assert asyncio.run(add_async()) == 7
        admin_ping = subprocess.run(
            [sys.executable, "-m", "rpc_redis.admin", "ping", "calculator", "--redis-url",
             user_url(fresh_redis, "rpc-admin")], capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert admin_ping.returncode == 0 and "pong" in admin_ping.stdout, admin_ping.stderr
        with redis.Redis.from_url(client_url) as as_client:
            bare_id = "rpc:reply:3f1c9a0e-9b1f-4d43-8a57-0c1a3cf0a2b9"
            request = {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": bare_id}
            as_client.rpush(protocol.queue_key("calculator"), json.dumps(request))
            _, raw = as_client.blpop([bare_id], 5)  # type: ignore[misc]
            assert json.loads(raw)["result"] == 3
            # The client's user reaches no dead letters and no key outside its own.
            for refused in (
                lambda: as_client.lrange(protocol.dead_letter_key("calculator"), 0, -1),
                lambda: as_client.set("rpc:queue:x", "1"),
                lambda: as_client.rpush("elsewhere", "1"),
            ):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    refused()
        # A bare request naming a reply key outside the worker's keys: Redis refuses the
        # reply (NOPERM), and the request is dead-lettered with that reason.
        with redis.Redis.from_url(fresh_redis.url) as admin_view:
            outside = {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": "replies:9"}
            admin_view.rpush(protocol.queue_key("calculator"), json.dumps(outside))
            dead = protocol.dead_letter_key("calculator")
            wait_until(lambda: admin_view.llen(dead) == 1, what="the refused reply's dead letter")
            assert not admin_view.exists("replies:9")
            [entry] = admin_view.lrange(dead, 0, -1)
            assert "NoPermissionError" in json.loads(entry)["reason"]
        assert plain.stop() == 0 and reliable.stop() == 0  # CLIENT LIST and UNBLOCK at stop
    for worker in (plain, reliable):  # refused nothing but the reply outside its keys
        refusals = [line for line in worker.lines if "refused" in line or "NOPERM" in line]
        expected = 1 if worker is plain else 0
        assert len(refusals) == expected and "replies:9" not in worker.output, worker.output

    admin = [sys.executable, "-m", "rpc_redis.admin", "dead"]

    def run_admin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*admin, *args, "--redis-url", admin_url], capture_output=True, text=True, timeout=30
        )

    assert run_admin("count", "calculator").stdout == "1\n"
    for command in ("status", "workers"):  # the registry, the queues: read, not written
        shown = subprocess.run(
            [sys.executable, "-m", "rpc_redis.admin", command, "--redis-url", admin_url],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert shown.returncode in (0, 3) and not shown.stderr, shown.stderr
    assert "add" in run_admin("list", "calculator").stdout
    requeued = run_admin("requeue", "calculator")
    assert requeued.returncode == 0 and "requeued 1 message" in requeued.stdout, requeued.stderr
    assert run_admin("purge", "calculator", "--yes").returncode == 0
    with redis.Redis.from_url(admin_url) as as_admin:
        for refused in (
            lambda: as_admin.lrange("elsewhere", 0, -1),
            lambda: as_admin.set(protocol.queue_key("calculator"), "1"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                refused()
    with redis.Redis.from_url(worker_url) as as_worker:
        with pytest.raises(redis.exceptions.NoPermissionError):
            as_worker.set("elsewhere", "1")


def test_the_page_examples_run(
    redis_url: str, tls_redis: TlsRedis, mtls_redis: TlsRedis, tls_certificates: TlsFiles
) -> None:
    blocks = python_blocks(PAGE)
    assert len(blocks) == 3
    checked: list[Any] = []

    def check(actual: Any, expected: Any) -> None:
        assert actual == expected
        checked.append(actual)

    files = {
        "/etc/rpc/ca.pem": tls_certificates.ca_cert,
        "/etc/rpc/client.pem": tls_certificates.client_cert,
        "/etc/rpc/client.key": tls_certificates.client_key,
    }
    local = redis_url.removeprefix("redis://").split("/")[0]
    servers = [redis_url, tls_redis.url_with_certificates(),
               mtls_redis.url_with_certificates(client_certificate=True)]  # fmt: skip
    for block, url in zip(blocks, servers, strict=True):
        source, _ = with_checks(block)
        source = source.replace('host="localhost", port=6379', _host_and_port(local))
        source = source.replace(EXAMPLE_URL, redis_url)
        tls_server = tls_redis if url is servers[1] else mtls_redis
        source = source.replace("redis.internal:6380", f"127.0.0.1:{tls_server.proxy.port}")
        for shown, real in files.items():
            source = source.replace(shown, str(real))
        with serve_in_thread(calculator, url):
            exec(compile(source, str(PAGE), "exec"), {"_check": check, "__name__": "deployment"})
    assert checked == [3, 3, 3, 3]


def _host_and_port(address: str) -> str:
    host, port = address.rsplit(":", 1)
    return f'host="{host}", port={port}'
