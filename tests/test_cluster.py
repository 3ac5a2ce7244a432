"""rpc-redis on a real 3-primary Redis Cluster (a replica each): calls to services on
every primary, sync and async, plain and reliable; a slot migrated while calls run
(ASK, then MOVED, followed and never surfaced); a reliable worker killed -9 and its
request recovered by another; a primary killed and its replica promoted mid-stream."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio

from rpc_redis import AsyncClient, Client, Service, protocol
from rpc_redis.embedded import EmbeddedRedis
from rpc_redis.events import wire
from rpc_redis.testing import WorkerProcess, pid_alive, serve_in_thread, wait_until
from rpc_redis.topologies import EmbeddedCluster
from rpc_redis.topologies.nodes import connect
from rpc_redis.worker.receiving import CLUSTER_BLOCK_SECONDS
from tests.call_streams import CallStream, assert_answered_or_typed_within_timeout
from tests.conftest import REPOSITORY
from tests.production_services import NAMES, echoes, held
from tests.test_deployment_doc import PASSWORDS, cluster_lines

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    """One cluster for the module; the test that kills a primary runs last."""
    with EmbeddedCluster(primaries=3, replicas=1) as started:
        yield started
        pids = started.pids
    assert not any(pid_alive(pid) for pid in pids)


@pytest.fixture(autouse=True)
def emptied(cluster: EmbeddedCluster) -> None:
    for node in cluster.primaries():
        with connect(node) as connection:
            connection.flushall()


def queue_owner(cluster: EmbeddedCluster, service: str) -> EmbeddedRedis:
    return cluster.node_for_key(protocol.queue_key(service))


def test_services_on_every_primary_answer_sync_and_async_plain_and_reliable(
    cluster: EmbeddedCluster,
) -> None:
    owners = {queue_owner(cluster, name).port for name in NAMES}
    assert len(owners) == 3  # the four services' queues live on all three primaries
    # The sync client's reply key is in its queue's slot: one node, one round trip.
    reply_key = protocol.call_reply_key(protocol.queue_key("beta"), "0" * 32)
    assert cluster.slot_of(reply_key) == cluster.slot_of(protocol.queue_key("beta"))

    async def gathered() -> list[object]:
        async with AsyncClient(cluster.url, timeout=TIMEOUT) as client:
            calls = [client.proxy(name).echo(n) for n in range(25) for name in NAMES]
            return list(await asyncio.gather(*calls))

    for reliable in (False, True):
        with serve_in_thread(echoes, cluster.url, concurrency=4, reliable=reliable):
            with Client(cluster.url, timeout=TIMEOUT) as client:
                assert [client.proxy(name).echo(1) for name in NAMES] == [
                    [name, 1] for name in NAMES
                ]
                with client.batch("gamma") as batch:
                    first, second = batch.echo("a"), batch.echo("b")
                assert (first.result(), second.result()) == (["gamma", "a"], ["gamma", "b"])
            results = asyncio.run(gathered())
        assert results == [[name, n] for n in range(25) for name in NAMES]


def test_a_slot_migrated_while_calls_run_loses_no_call(cluster: EmbeddedCluster) -> None:
    """ASK while the slot's keys move, MOVED once it has: clients and workers follow
    both, so that every call is answered. alpha's worker receives in threads, and new
    calls go on while its slot migrates (a sync call already waiting on the old node
    when the migration began gets its reply, written on the new one, once the slot has
    moved); beta's is reliable, on its event loop, and its BLMOVE names two keys, which
    Redis refuses (TRYAGAIN) while their slot is split between two nodes: its calls
    wait, within their timeout, until the slot has moved."""
    streams = {
        (name, asynchronous): CallStream(
            cluster.url, name, asynchronous=asynchronous, timeout=TIMEOUT
        )
        for name in ("alpha", "beta")
        for asynchronous in (False, True)
    }
    with (
        serve_in_thread(echoes[0], cluster.url, concurrency=4),
        serve_in_thread(echoes[1], cluster.url, concurrency=4, reliable=True),
    ):
        for stream in streams.values():
            stream.start().wait_for_answers(10)
        for name in ("alpha", "beta"):
            slot = cluster.slot_of(protocol.queue_key(name))
            source = cluster.node_for_slot(slot)
            target = next(node for node in cluster.primaries() if node is not source)
            migration = cluster.begin_slot_migration(slot, target)
            migration.move_keys()  # the source answers ASK for every key it no longer has
            since = time.monotonic()
            if name == "alpha":  # new calls go on through ASK (beta's wait: see above)
                streams[("alpha", True)].wait_for_answers(3, since=since)
            migration.finish()  # every key of the slot is a MOVED on the source now
            assert cluster.node_for_slot(slot) is target
            since = time.monotonic()
            for stream in streams.values():
                stream.wait_for_answers(10, since=since)
        outcomes = [outcome for stream in streams.values() for outcome in stream.stop()]
    unanswered = [outcome for outcome in outcomes if not outcome.answered]
    assert not unanswered, unanswered[:3]


def blocked_on(connection: redis.Redis, command: str) -> int:
    """How many clients of this node are blocked in ``command`` now."""
    return sum(
        1
        for client in connection.client_list()
        if client.get("cmd") == command and "b" in client.get("flags", "")
    )


def test_workers_blocked_on_a_slot_being_migrated_take_new_calls_within_a_block(
    cluster: EmbeddedCluster,
) -> None:
    """While a slot migrates, the calls clients send go to its new node (ASK), and Redis
    leaves a worker's BLPOP blocked on the old node blocked there, seeing none of them:
    on a cluster, lanes block CLUSTER_BLOCK_SECONDS at a time, not the 5 seconds they
    block elsewhere, so a call sent then waits that long at most, while the slot is
    still migrating. A durable event emitted meanwhile waits the migration out (its
    lane does not read a stream half moved), and is handled once the slot has moved."""
    service = Service("mover")
    handled = threading.Event()

    @service.method
    def echo(value: int) -> int:
        return value

    @service.on("moves")
    def moved(number: int) -> None:
        handled.set()

    bound = CLUSTER_BLOCK_SECONDS + 2.0  # and what a busy 2-core machine adds
    with (
        serve_in_thread(service, cluster.url, concurrency=2),
        Client(cluster.url, timeout=TIMEOUT) as client,
    ):
        assert client.proxy("mover").echo(1) == 1
        client.emit("moves", 0)
        assert handled.wait(TIMEOUT)
        handled.clear()
        for key, command, blocking in (
            (protocol.queue_key("mover"), "blpop", 2),  # both lanes
            (wire.stream_key("moves"), "xreadgroup", 1),  # the other waits in reserve
        ):
            slot = cluster.slot_of(key)
            source = cluster.node_for_slot(slot)
            target = next(node for node in cluster.primaries() if node is not source)
            with connect(source) as connection:
                wait_until(
                    lambda c=connection, n=command, b=blocking: blocked_on(c, n) >= b,
                    what=f"{blocking} {command} blocked on {source.url}",
                )
            migration = cluster.begin_slot_migration(slot, target)
            migration.move_keys()
            if command == "blpop":
                assert client.proxy("mover", timeout=bound).echo(2) == 2
                migration.finish()
            else:
                client.emit("moves", 1)
                migration.finish()
                assert handled.wait(TIMEOUT)
        assert client.proxy("mover").echo(3) == 3


def test_a_reliable_worker_killed_on_a_cluster_has_its_request_recovered(
    cluster: EmbeddedCluster,
) -> None:
    env = {**os.environ, "RPC_REDIS_URL": cluster.url}
    args = ["tests.production_services:held", "--reliable", "--heartbeat-interval", "0.3"]
    holder = cluster.node_for_key("rpc:inprogress:{held}:x")
    with (
        WorkerProcess(args, cwd=REPOSITORY, env=env) as first,
        Client(cluster.url, timeout=20) as client,
    ):
        outcome: dict[str, object] = {}
        caller = threading.Thread(
            target=lambda: outcome.setdefault("value", client.proxy("held").hold("kept", 1.0))
        )
        caller.start()
        with connect(holder) as connection:
            wait_until(lambda: connection.keys("rpc:inprogress:{held}:*"), what="in progress")
        first.signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        with WorkerProcess(args, cwd=REPOSITORY, env=env) as second:
            caller.join(20)
            second.wait_for_line(r"recovered 1 request\(s\) of dead worker .*: 1 requeued")
    assert outcome == {"value": "kept"}


def test_rpc_worker_processes_under_the_supervisor_serve_a_cluster(
    cluster: EmbeddedCluster,
) -> None:
    """The URL reaches the supervisor's children in their environment, resolved there."""
    args = ["tests.production_services", "--redis-url", cluster.url, "--processes", "2"]
    with WorkerProcess(args, cwd=REPOSITORY) as supervisor:
        supervisor.wait_for_line(WorkerProcess.READY, count=2)
        with Client(cluster.url, timeout=TIMEOUT) as client:
            assert [client.proxy(name).echo(2) for name in NAMES] == [[n, 2] for n in NAMES]
        assert supervisor.stop() == 0
    assert "supervising 2 processes" in supervisor.output
    assert supervisor.output.count("on redis+cluster://") == 2  # each child, redacted


def test_the_cluster_acl_lines_of_the_deployment_guide_serve_each_role(
    cluster: EmbeddedCluster,
) -> None:
    lines = cluster_lines()
    cluster.add_acl_users([line.split()[2:] for line in lines])  # after "ACL SETUSER"
    hosts = cluster.url.split("@")[-1].removeprefix("redis+cluster://")

    def url(user: str) -> str:
        return f"redis+cluster://{user}:{PASSWORDS[user]}@{hosts}"

    with (
        serve_in_thread(echoes, url("rpc-worker"), concurrency=4),
        serve_in_thread(held, url("rpc-worker"), reliable=True),
        Client(url("rpc-client"), timeout=TIMEOUT) as client,
    ):
        assert [client.proxy(name).echo(0) for name in NAMES] == [[name, 0] for name in NAMES]
        assert client.proxy("held").hold("ok", 0) == "ok"

        async def gathered() -> list[object]:
            async with AsyncClient(url("rpc-client"), timeout=TIMEOUT) as async_client:
                return list(await asyncio.gather(*(async_client.proxy(n).echo(1) for n in NAMES)))

        assert asyncio.run(gathered()) == [[name, 1] for name in NAMES]
        status = subprocess.run(
            [sys.executable, "-m", "rpc_redis.admin", "status", "--redis-url", url("rpc-admin")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert status.returncode == 0, status.stdout + status.stderr
        assert all(f"rpc:queue:{{{name}}}" in status.stdout for name in NAMES), status.stdout
    dead = protocol.dead_letter_key("beta")
    with connect(cluster.node_for_key(dead)) as owner:
        entry = protocol.encode_dead_letter(b'{"x": 1}', "test", "rpc:queue:beta", 0.0)
        owner.rpush(dead, entry)  # its queue, without the hash tag, in another slot
    admin = [sys.executable, "-m", "rpc_redis.admin", "dead"]
    for action, says in (("count", "1"), ("requeue", "requeued 1 message"), ("count", "0")):
        done = subprocess.run(
            [*admin, action, "beta", "--redis-url", url("rpc-admin")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0 and says in done.stdout, done.stderr
    with connect(cluster.node_for_key("rpc:queue:beta")) as queue_owner_connection:
        assert queue_owner_connection.lrange("rpc:queue:beta", 0, -1) == ['{"x": 1}']


def test_clients_and_a_worker_take_a_redis_cluster_the_user_built(
    cluster: EmbeddedCluster,
) -> None:
    """Its seed nodes and connection settings; an asyncio RedisCluster not yet connected
    knows only its seeds, and those are enough."""

    def async_cluster() -> redis.asyncio.RedisCluster:
        seeds = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in cluster.startup_nodes]
        return redis.asyncio.RedisCluster(startup_nodes=seeds)

    async def gathered() -> list[object]:
        given = async_cluster()
        async with AsyncClient(redis=given, timeout=TIMEOUT) as client:
            answers = await asyncio.gather(*(client.proxy(n).echo(2) for n in NAMES))
        await given.aclose()
        return list(answers)

    with serve_in_thread(echoes, redis=async_cluster(), concurrency=2):
        with cluster.client(decode_responses=False) as given:
            with Client(redis=given, timeout=TIMEOUT) as client:
                assert client.target.is_cluster
                assert [client.proxy(n).echo(1) for n in NAMES] == [[n, 1] for n in NAMES]
        assert asyncio.run(gathered()) == [[name, 2] for name in NAMES]


def test_a_busy_service_does_not_starve_another_in_another_slot(
    cluster: EmbeddedCluster,
) -> None:
    """One worker, --concurrency 1, two services in two slots: each slot's queues have a
    thread of their own, so a call held on one service leaves the other answered."""
    slots = {cluster.slot_of(protocol.queue_key(name)) for name in ("held", "alpha")}
    assert len(slots) == 2
    with (
        serve_in_thread([held, echoes[0]], cluster.url, concurrency=1),
        Client(cluster.url, timeout=TIMEOUT) as client,
    ):
        holding = threading.Thread(target=lambda: client.proxy("held").hold("busy", 3.0))
        holding.start()
        with connect(cluster.node_for_key(protocol.queue_key("held"))) as node:
            wait_until(lambda: not node.llen(protocol.queue_key("held")), what="held taken")
        started = time.monotonic()
        assert client.proxy("alpha").echo("free") == ["alpha", "free"]
        assert time.monotonic() - started < 2.0  # not behind the 3 s call
        holding.join(TIMEOUT)


def test_a_killed_primary_is_replaced_and_calls_go_on(cluster: EmbeddedCluster) -> None:
    """Each call is answered or gets a typed error within its timeout; once the replica
    is promoted, calls to the slot are answered again, through clients and workers that
    found the new owner by themselves."""
    streams = [
        CallStream(cluster.url, "delta", asynchronous=asynchronous, timeout=TIMEOUT)
        for asynchronous in (False, True)
    ]
    with serve_in_thread(echoes, cluster.url, concurrency=4):
        for stream in streams:
            stream.start().wait_for_answers(10)
        victim = queue_owner(cluster, "delta")
        cluster.kill_primary(victim)
        replacement = cluster.wait_for_failover(victim)
        since = time.monotonic()
        for stream in streams:
            stream.wait_for_answers(10, since=since)
        outcomes = [outcome for stream in streams for outcome in stream.stop()]
    assert queue_owner(cluster, "delta") is replacement
    assert_answered_or_typed_within_timeout(outcomes, TIMEOUT)
    assert victim.process is None  # left down: the module's last test (see the fixture)
