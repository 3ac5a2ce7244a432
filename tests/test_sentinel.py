"""rpc-redis under Sentinel on real processes (a primary, a replica, three sentinels, all
behind passwords): the primary killed mid-stream of sync and async calls, plain and
reliable workers following the new primary; reliable mode recovering what the old
primary acknowledged; rpc-worker and rpc-admin given a redis+sentinel:// URL."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from rpc_redis import (
    AsyncClient,
    Client,
    RpcConfigurationError,
    RpcConnectionError,
    RpcTimeout,
    protocol,
)
from rpc_redis.connection import resolve
from rpc_redis.embedded import free_port
from rpc_redis.testing import WorkerProcess, pid_alive, serve_in_thread, wait_until
from rpc_redis.topologies import SentinelSet
from rpc_redis.topologies.nodes import connect, multi_host_url, replication
from rpc_redis.topologies.sentinel import MASTER_NAME
from tests.call_streams import CallStream, assert_answered_or_typed_within_timeout
from tests.conftest import REPOSITORY
from tests.production_services import alpha, beta

TIMEOUT = 10.0
PASSWORD = "node-secret"
SENTINEL_PASSWORD = "sentinel-secret"


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelSet]:
    """One set for the module; a test that kills the primary brings it back as a replica."""
    with SentinelSet(password=PASSWORD, sentinel_password=SENTINEL_PASSWORD) as started:
        yield started
        pids = started.pids
    assert not any(pid_alive(pid) for pid in pids)


def primary_connection(sentinels: SentinelSet) -> object:
    return connect(sentinels.node_at(sentinels.primary_address()), PASSWORD)


def test_discoveries_at_once_keep_every_sentinel(sentinels: SentinelSet) -> None:
    """Many connections asking where the primary is at once (as a pool's do after a
    failover), the first sentinel listed not answering: each sentinel stays listed once.
    redis-py's discovery swapped by a stale index, listing one twice and dropping another
    with its connections, which were then never closed."""
    addresses = [("127.0.0.1", free_port()), *sentinels.sentinel_addresses]
    path = f"/{sentinels.master_name}/0?sentinel_password={SENTINEL_PASSWORD}"
    target = resolve(multi_host_url("redis+sentinel", addresses, PASSWORD, path))
    primary = sentinels.primary_address()

    async def discover_at_once() -> list[int]:
        manager = target.async_pool().sentinel_manager
        listed = [id(sentinel) for sentinel in manager.sentinels]
        found = await asyncio.gather(*(manager.discover_master(MASTER_NAME) for _ in range(20)))
        assert {tuple(address) for address in found} == {primary}
        kept = [id(sentinel) for sentinel in manager.sentinels]
        await target.aclose()
        return sorted(listed) == sorted(kept)

    assert asyncio.run(discover_at_once())
    manager = target.sync_pool().sentinel_manager
    listed = sorted(id(sentinel) for sentinel in manager.sentinels)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda _: manager.discover_master(MASTER_NAME), range(40)))
    assert {tuple(address) for address in found} == {primary}
    assert sorted(id(sentinel) for sentinel in manager.sentinels) == listed
    target.close()


def test_the_primary_killed_mid_stream_of_sync_and_async_calls(sentinels: SentinelSet) -> None:
    """Each call is answered or gets a typed error within its timeout, never a hang; the
    workers (alpha in threads, beta reliable on the event loop) find the new primary and
    serve within seconds, and so do the clients."""
    streams = [
        CallStream(sentinels.url, name, asynchronous=asynchronous, timeout=TIMEOUT)
        for name in ("alpha", "beta")
        for asynchronous in (False, True)
    ]
    with (
        serve_in_thread(alpha, sentinels.url, concurrency=4),
        serve_in_thread(beta, sentinels.url, concurrency=4, reliable=True),
    ):
        for stream in streams:
            stream.start().wait_for_answers(10)
        old = sentinels.primary_address()
        killed = sentinels.kill_primary()
        new = sentinels.wait_for_failover(old)
        promoted = time.monotonic()
        for stream in streams:
            stream.wait_for_answers(10, since=promoted, timeout=TIMEOUT + 10)
        outcomes = [outcome for stream in streams for outcome in stream.stop()]
    assert new != old
    assert_answered_or_typed_within_timeout(outcomes, TIMEOUT)
    sentinels.restart(killed)


def test_connections_a_client_kept_go_to_the_new_primary_after_a_failover(
    sentinels: SentinelSet,
) -> None:
    """A planned failover (SENTINEL FAILOVER): the old primary lives on, a replica that
    refuses writes. The client kept four connections to it between calls; once a call
    has found the new primary, no kept connection writes to the old one (as redis-py's
    pool drops its idle connections when the primary moves)."""
    waits: list[BaseException | None] = []

    def wait_for_no_reply(client: Client) -> None:
        try:
            client.call("absent", "method", timeout=0.5)
        except RpcTimeout:
            waits.append(None)
        except BaseException as exc:
            waits.append(exc)

    with Client(sentinels.url, timeout=TIMEOUT) as client:
        threads = [threading.Thread(target=wait_for_no_reply, args=(client,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert waits == [None] * 4  # four connections at once, kept since
        old = sentinels.primary_address()
        with connect(sentinels.sentinels[0], SENTINEL_PASSWORD) as sentinel:
            sentinel.execute_command("SENTINEL", "FAILOVER", sentinels.master_name)
        new = sentinels.wait_for_failover(old)
        # What the sentinels do to it at their next look (up to 10 s away), done now.
        with connect(sentinels.node_at(old), PASSWORD) as demoted:
            demoted.execute_command("REPLICAOF", *new)
        wait_until(
            lambda: replication(sentinels.node_at(old), PASSWORD).get("role") == "slave",
            what="the old primary turned replica",
        )
        # The first call meets the refusal, and may fail; the next, on the connection it
        # dropped, asks the sentinels and finds the new primary. (Calls one by one would
        # go on reusing that one connection: the others are lent four at once.)
        with contextlib.suppress(RpcConnectionError):
            client.emit("after_failover", {"n": 0})
        client.emit("after_failover", {"n": 1})
        waits.clear()
        threads = [threading.Thread(target=wait_for_no_reply, args=(client,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert waits == [None] * 4  # all four kept connections lent: none to the old one
        with connect(sentinels.node_at(new), PASSWORD) as primary:
            assert primary.llen("rpc:queue:{absent}") >= 4


def test_reliable_mode_recovers_what_the_old_primary_acknowledged(
    sentinels: SentinelSet,
) -> None:
    """A request in a reliable worker's in-progress list, replicated (WAIT) before the
    primary dies with the worker: a new worker on the new primary recovers it, and the
    caller, waiting on the new primary, gets its answer."""
    env = {**os.environ, "RPC_REDIS_URL": sentinels.url}
    args = ["tests.production_services:held", "--reliable", "--heartbeat-interval", "0.3"]

    outcome: dict[str, object] = {}

    def call_held() -> None:
        async def call() -> None:
            async with AsyncClient(sentinels.url, timeout=40) as client:
                outcome["value"] = await client.proxy("held").hold("kept", 0.5)

        asyncio.run(call())

    caller = threading.Thread(target=call_held)
    with WorkerProcess(args, cwd=REPOSITORY, env=env) as first:
        caller.start()
        with primary_connection(sentinels) as primary:  # type: ignore[attr-defined]
            wait_until(
                lambda: primary.keys("rpc:inprogress:{held}:*"),
                what="the request in the worker's in-progress list",
            )
            assert primary.execute_command("WAIT", 1, 2000) == 1  # on the replica too
        first.signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    old = sentinels.primary_address()
    killed = sentinels.kill_primary()
    sentinels.wait_for_failover(old)
    with WorkerProcess(args, cwd=REPOSITORY, env=env) as second:
        caller.join(40)
        second.wait_for_line(r"recovered 1 request\(s\) of dead worker .*: 1 requeued")
    assert outcome == {"value": "kept"}
    assert not killed.process  # left down: what follows needs no replica


def test_rpc_admin_and_rpc_worker_take_a_sentinel_url(sentinels: SentinelSet) -> None:
    with primary_connection(sentinels) as primary:  # type: ignore[attr-defined]
        primary.rpush(protocol.dead_letter_key("alpha"), b"{}")
    admin = [sys.executable, "-m", "rpc_redis.admin", "dead", "count", "alpha"]
    counted = subprocess.run(
        [*admin, "--redis-url", sentinels.url], capture_output=True, text=True, timeout=30
    )
    assert (counted.returncode, counted.stdout) == (0, "1\n"), counted.stderr
    wrong = sentinels.url.replace(SENTINEL_PASSWORD, "wrong")
    refused = subprocess.run(
        [*admin, "--redis-url", wrong], capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.splitlines()) == 1 and "wrong" not in refused.stderr
    env = {**os.environ, "RPC_REDIS_URL": wrong}
    worker = WorkerProcess(["tests.production_services:alpha"], env=env, cwd=REPOSITORY)
    assert worker.start(ready_timeout=0).wait(30) == 2, worker.output
    assert worker.lines[-1].startswith("rpc-worker: error: ") and "wrong" not in worker.output


def test_a_primary_name_no_sentinel_monitors_is_a_configuration_error(
    sentinels: SentinelSet,
) -> None:
    """A mistyped name in the URL: the sentinels answer, none knows the name. A client
    says so (RpcConfigurationError naming it) and rpc-worker exits 2 in one line, instead
    of waiting it out as a failover."""
    mistyped = sentinels.url.replace(f"/{MASTER_NAME}/", "/rpc-primray/")
    with Client(mistyped, timeout=5) as client:
        with pytest.raises(RpcConfigurationError, match="rpc-primray"):
            client.call("alpha", "echo", [1])

    async def call_async() -> None:
        async with AsyncClient(mistyped, timeout=5) as client:
            await client.call("alpha", "echo", [1])

    with pytest.raises(RpcConfigurationError, match="rpc-primray"):
        asyncio.run(call_async())
    env = {**os.environ, "RPC_REDIS_URL": mistyped}
    worker = WorkerProcess(["tests.production_services:alpha"], env=env, cwd=REPOSITORY)
    assert worker.start(ready_timeout=0).wait(30) == 2, worker.output
    assert worker.lines[-1].startswith("rpc-worker: error: ") and "rpc-primray" in worker.lines[-1]
    assert len([line for line in worker.lines if "error" in line]) == 1, worker.output
    assert PASSWORD not in worker.output and SENTINEL_PASSWORD not in worker.output
