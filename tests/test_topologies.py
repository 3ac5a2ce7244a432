"""The test topologies on real processes: Sentinel failover, a cluster resharded and failed
over, TLS and mutual TLS through the proxy, ACL users, a unix socket; all stopped by pid."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from rpc_redis.embedded import EmbeddedRedis
from rpc_redis.testing import pid_alive, wait_until
from rpc_redis.topologies import (
    EmbeddedCluster,
    SentinelSet,
    TlsFiles,
    TlsProxy,
    TlsRedis,
    TopologyError,
    UnixSocketRedis,
    set_acl_users,
)
from rpc_redis.topologies.nodes import connect, in_sync

WORKER_USER = ["worker", "on", ">worker-secret", "resetkeys", "~rpc:*", "-@all", "+get", "+set"]
# What redis-py's RedisCluster sends besides: CLUSTER SLOTS for the map, COMMAND for key positions.
CLUSTER_USER = [*WORKER_USER, "+cluster|slots", "+command"]


def all_gone(pids: list[int]) -> bool:
    return not any(pid_alive(pid) for pid in pids)


# -- Sentinel ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sentinel_set", [{"password": "node-secret", "sentinel_password": "sentinel-secret"}],
    indirect=True,
)  # fmt: skip
def test_sentinel_failover_promotes_the_replica_and_the_old_primary_rejoins(
    sentinel_set: SentinelSet,
) -> None:
    sentinels = sentinel_set
    started = sentinels.pids
    assert len(started) == 5
    with redis.Redis(*sentinels.sentinel_addresses[0]) as anonymous:
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()
    sentinels.add_acl_users([WORKER_USER])
    watcher = redis.sentinel.Sentinel(
        sentinels.sentinel_addresses,
        sentinel_kwargs={"password": "sentinel-secret"},
        password="node-secret",
        socket_timeout=2,
    )
    old = sentinels.primary_address()
    assert watcher.discover_master(sentinels.master_name) == old
    primary = watcher.master_for(sentinels.master_name)
    primary.set("rpc:before", "failover")
    assert primary.execute_command("WAIT", 1, 2000) == 1  # on the replica before the kill

    killed = sentinels.kill_primary()
    assert killed.pid is None and not pid_alive(started[0])
    new = sentinels.wait_for_failover(old)

    assert new != old and sentinels.reported_primaries() == [new, new, new]
    assert watcher.discover_master(sentinels.master_name) == new
    assert primary.get("rpc:before") == b"failover"  # redis-py follows the sentinels
    sentinels.restart(killed)
    assert in_sync(killed, "node-secret")
    with connect(killed, "node-secret") as as_replica:
        assert as_replica.info("replication")["master_port"] == new[1]
        assert as_replica.acl_getuser("worker") is not None  # its ACL users came back too
    primary.close()
    for connection in watcher.sentinels:
        connection.close()
    restarted = sentinels.pids
    sentinels.close()
    assert all_gone(started + restarted)


# -- Cluster -------------------------------------------------------------------------------


def raw_get(node: EmbeddedRedis, key: str) -> str:
    """A node's own answer for one key, redirections included, as a plain client sees it."""
    with connect(node) as connection:
        try:
            return f"value {connection.get(key)}"
        except redis.exceptions.MovedError:  # a subclass of AskError
            return "MOVED"
        except redis.exceptions.AskError:
            return "ASK"


@pytest.fixture
def reader(redis_cluster: EmbeddedCluster) -> Iterator[ReadLoop]:
    loop = ReadLoop(redis_cluster)
    yield loop
    loop.stop()


class ReadLoop:
    """A RedisCluster client reading keys in a thread while the cluster changes under it;
    bounded in time, and stopped by the test."""

    def __init__(self, cluster: EmbeddedCluster) -> None:
        self.client = cluster.client()
        self.keys: list[str] = []
        self.reads = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, keys: list[str]) -> None:
        self.keys = keys
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 30
        while not self._stop.is_set() and time.monotonic() < deadline:
            for key in self.keys:
                try:
                    if self.client.get(key) != key:
                        self.errors.append(AssertionError(f"{key} read wrong"))
                except redis.exceptions.RedisError as exc:
                    self.errors.append(exc)
                self.reads += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.client.close()


def test_cluster_keys_live_on_their_slots_node_and_a_slot_migrates_under_a_client(
    redis_cluster: EmbeddedCluster, reader: ReadLoop
) -> None:
    cluster = redis_cluster
    started = cluster.pids
    assert len(started) == 6 and len(cluster.primaries()) == 3
    client = cluster.client()
    keys = [f"rpc:{{calculator}}:{n}" for n in range(40)]
    others = [f"rpc:queue:{name}" for name in ("cats", "dogs", "owls", "bees")]
    for key in keys + others:
        client.set(key, key)
    for key in others:
        owner = cluster.node_for_key(key)
        assert raw_get(owner, key) == f"value {key}"
        assert {raw_get(n, key) for n in cluster.primaries() if n is not owner} == {"MOVED"}

    slot = cluster.slot_of("{calculator}")
    source = cluster.node_for_slot(slot)
    target = next(node for node in cluster.primaries() if node is not source)
    reader.start(keys)
    migration = cluster.begin_slot_migration(slot, target)
    assert migration.move_keys(limit=10) == 10
    moved = next(key for key in keys if raw_get(source, key) == "ASK")
    assert client.get(moved) == moved  # redis-py follows the ASK
    migration.finish()

    assert cluster.node_for_slot(slot) is target
    assert raw_get(source, moved) == "MOVED" and raw_get(target, moved) == f"value {moved}"
    assert [client.get(key) for key in keys] == keys
    reads_after_finish = reader.reads
    cluster.wait_until_ok()
    wait_until(lambda: reader.reads > reads_after_finish + len(keys), what="reads after the move")
    reader.stop()
    assert reader.errors == [] and reader.reads > len(keys)
    client.close()
    cluster.close()
    assert all_gone(started)


def test_cluster_kill_of_a_primary_promotes_its_replica(redis_cluster: EmbeddedCluster) -> None:
    cluster = redis_cluster
    started = cluster.pids
    cluster.add_acl_users([CLUSTER_USER])
    victim = cluster.primaries()[0]
    (replica,) = cluster.replicas_of(victim)
    key = next(f"rpc:{n}" for n in range(1000) if cluster.node_for_key(f"rpc:{n}") is victim)
    with connect(victim) as connection:
        connection.set(key, "kept")
        assert connection.execute_command("WAIT", 1, 2000) == 1

    cluster.kill_primary(victim)
    assert cluster.wait_for_failover(victim) is replica
    assert cluster.node_for_key(key) is replica
    with cluster.client(username="worker", password="worker-secret") as worker:
        assert worker.get(key) == "kept"
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.get("other")
    cluster.restart(victim)
    assert cluster.replicas_of(replica) == [victim]
    restarted = cluster.pids
    cluster.close()
    assert all_gone(started + restarted)


# -- TLS -----------------------------------------------------------------------------------


def test_tls_with_the_runs_ca_verification_off_and_a_wrong_ca(
    tls_redis: TlsRedis, tls_certificates: TlsFiles
) -> None:
    ca = str(tls_certificates.ca_cert)
    with redis.Redis.from_url(tls_redis.url, ssl_ca_certs=ca) as verified:
        assert verified.ping()
    with redis.Redis.from_url(tls_redis.url_with_certificates()) as from_the_url:
        assert from_the_url.ping()
    with redis.Redis.from_url(tls_redis.url, ssl_cert_reqs="none") as unverified:
        assert unverified.ping()
    wrong = redis.Redis.from_url(tls_redis.url, ssl_ca_certs=str(tls_certificates.other_ca_cert))
    with wrong, pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
        wrong.ping()
    once = Retry(NoBackoff(), 0)  # redis-py retries a lost connection 3 times, with backoff
    with redis.Redis(tls_redis.proxy.host, tls_redis.proxy.port, retry=once) as plaintext:
        with pytest.raises(redis.exceptions.ConnectionError):
            plaintext.ping()  # plaintext to the TLS port: the proxy drops it
    pids = tls_redis.pids
    tls_redis.close()
    assert len(pids) == 2 and all_gone(pids)


def test_mutual_tls_refuses_a_client_without_a_certificate(mtls_redis: TlsRedis) -> None:
    anonymous = redis.Redis.from_url(mtls_redis.url_with_certificates())
    with anonymous, pytest.raises(redis.exceptions.ConnectionError):
        anonymous.ping()
    with redis.Redis.from_url(mtls_redis.url_with_certificates(client_certificate=True)) as known:
        assert known.ping()


def test_tls_proxy_carries_many_blocked_connections_at_once(
    tls_redis: TlsRedis, tls_certificates: TlsFiles
) -> None:
    count = 50
    url = tls_redis.url_with_certificates()
    replies: list[object] = []
    ready = threading.Barrier(count + 1, timeout=20)

    def blocked_call(n: int) -> None:
        with redis.Redis.from_url(url, socket_timeout=20) as connection:
            connection.ping()
            ready.wait()
            replies.append(connection.blpop([f"rpc:reply:{n}"], timeout=15))

    threads = [threading.Thread(target=blocked_call, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    ready.wait()
    with connect(tls_redis.server) as direct:
        wait_until(
            lambda: sum(c["cmd"] == "blpop" for c in direct.client_list()) == count,
            what="every connection blocked in BLPOP through the proxy",
        )
        for n in range(count):
            direct.rpush(f"rpc:reply:{n}", f"answer {n}")
    for thread in threads:
        thread.join(20)
    assert sorted(replies) == sorted((f"rpc:reply:{n}".encode(), f"answer {n}".encode())
                                     for n in range(count))  # fmt: skip


def test_a_killed_proxy_is_a_lost_network_and_comes_back_on_its_port(
    tls_redis: TlsRedis,
) -> None:
    once = Retry(NoBackoff(), 0)
    with redis.Redis.from_url(tls_redis.url_with_certificates(), retry=once) as client:
        assert client.ping()
        first_pid, port = tls_redis.proxy.pid, tls_redis.proxy.port
        tls_redis.proxy.kill()
        assert first_pid is not None and not pid_alive(first_pid)
        with pytest.raises(redis.exceptions.ConnectionError):
            client.ping()
        tls_redis.proxy.start()
        assert tls_redis.proxy.port == port and tls_redis.proxy.pid != first_pid
        assert client.ping()


def test_a_proxy_that_cannot_start_says_why(tmp_path: Path, tls_certificates: TlsFiles) -> None:
    missing = replace(tls_certificates, server_cert=tmp_path / "missing.pem")
    proxy = TlsProxy(("127.0.0.1", 1), missing)
    with pytest.raises(TopologyError, match="No such file"):
        proxy.start()
    assert proxy.pid is None
    proxy.close()


def test_the_proxy_runs_as_a_module_command(tls_certificates: TlsFiles) -> None:
    with EmbeddedRedis() as server:
        proxy = subprocess.Popen(
            [sys.executable, "-m", "rpc_redis.topologies", "tls-proxy",
             "--target", f"{server.host}:{server.port}",
             "--cert", str(tls_certificates.server_cert),
             "--key", str(tls_certificates.server_key)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proxy.stdout is not None
            line = proxy.stdout.readline()
            assert line.startswith("listening on 127.0.0.1:")
            url = f"rediss://{line.split()[-1]}/0"
            with redis.Redis.from_url(url, ssl_ca_certs=str(tls_certificates.ca_cert)) as client:
                assert client.ping()
        finally:
            proxy.terminate()
            assert proxy.wait(10) == 0
            assert proxy.stdout is not None
            proxy.stdout.close()
    assert not pid_alive(proxy.pid)


# -- ACL users and unix sockets ------------------------------------------------------------


def test_acl_users_from_argument_lists(fresh_redis: EmbeddedRedis) -> None:
    set_acl_users([fresh_redis], [WORKER_USER, ["nobody", "off"]])
    url = f"redis://worker:worker-secret@{fresh_redis.host}:{fresh_redis.port}/0"
    with redis.Redis.from_url(url) as worker:
        worker.set("rpc:x", "1")
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.set("elsewhere", "1")
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.lpush("rpc:x:list", "1")


def test_unix_socket_server(unix_redis: UnixSocketRedis) -> None:
    assert unix_redis.socket_path.is_socket()
    with redis.Redis.from_url(unix_redis.unix_url) as connection:
        assert connection.ping()
        assert connection.client_info()["laddr"].startswith(str(unix_redis.socket_path))
