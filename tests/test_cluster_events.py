"""Events and streams on a real 3-primary Redis Cluster: durable events on streams that
live on different primaries, consumed by two services whose dead letters live on yet
others (a poison event dead-lettered across slots); pub/sub through a PUBLISH taken by
one node and heard on another; a stream of items read by both clients."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

from rpc_redis import AsyncClient, Client, Service, current_call, protocol
from rpc_redis.admin.dead import list_dead_letters, requeue_dead_letters
from rpc_redis.embedded import EmbeddedRedis
from rpc_redis.events import wire
from rpc_redis.testing import serve_in_thread, wait_until
from rpc_redis.topologies import EmbeddedCluster
from rpc_redis.topologies.nodes import connect
from tests.test_cluster import cluster, emptied

# The cluster test module's: one cluster for this module, emptied before each test.
__all__ = ["cluster", "emptied"]

# Topics whose streams, and services whose dead letters, are spread over the primaries.
TOPICS = ("orders", "refunds", "returns", "invoices")
EVENTS_PER_TOPIC = 30
NAMES = ("ledger", "warehouse")


class Seen:
    """What handlers running in this process saw, for a test to wait on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: list[tuple[str, str, Any, int]] = []  # service, source, data, delivery

    def add(self, service: str, data: Any) -> None:
        call = current_call()
        assert call is not None
        with self.lock:
            self.entries.append((service, str(call.event), data, call.delivery_count))

    def of(self, service: str) -> list[str]:
        """What ``service`` handled, each as JSON of its source and its data, sorted."""
        with self.lock:
            entries = [(source, data) for name, source, data, _ in self.entries if name == service]
        return sorted(json.dumps(entry, sort_keys=True) for entry in entries)


def consumers(seen: Seen) -> list[Service]:
    """Two services consuming every topic; a ``poison`` event always fails."""
    services = [Service(name) for name in NAMES]
    for service in services:
        for topic in TOPICS:

            def handle(data: Any, service_name: str = service.name) -> None:
                seen.add(service_name, data)
                if data == "poison":
                    raise ValueError("poison")

            service.on(topic)(handle)
    return services


def test_durable_events_on_streams_across_primaries_reach_each_service_once(
    cluster: EmbeddedCluster,
) -> None:
    streams = {cluster.node_for_key(wire.stream_key(topic)).port for topic in TOPICS}
    assert len(streams) >= 2  # the streams (and their groups) live on several primaries
    stream_node = cluster.node_for_key(wire.stream_key("orders")).port
    dead_nodes = {cluster.node_for_key(protocol.dead_letter_key(name)).port for name in NAMES}
    assert dead_nodes - {stream_node}  # a dead letter written to another node than its stream
    seen = Seen()
    # Emitted before any worker runs: handled once one starts.
    with Client(cluster.url) as client:
        for number in range(EVENTS_PER_TOPIC // 2):
            for topic in TOPICS:
                client.emit(topic, {"topic": topic, "n": number})
    options = {"concurrency": 2, "event_visibility": 0.6, "max_deliveries": 2}
    with serve_in_thread(consumers(seen), cluster.url, **options):

        async def emit_the_rest() -> None:
            async with AsyncClient(cluster.url) as aclient:
                for number in range(EVENTS_PER_TOPIC // 2, EVENTS_PER_TOPIC):
                    for topic in TOPICS:
                        await aclient.emit(topic, {"topic": topic, "n": number})
                await aclient.emit("orders", "poison")

        asyncio.run(emit_the_rest())
        expected = sorted(
            json.dumps((topic, {"topic": topic, "n": number}), sort_keys=True)
            for topic in TOPICS
            for number in range(EVENTS_PER_TOPIC)
        )

        def good(service: str) -> list[str]:
            return [entry for entry in seen.of(service) if "poison" not in entry]

        wait_until(
            lambda: good("ledger") == expected and good("warehouse") == expected,
            20,
            "every event handled by each service",
        )
        # The poison event, failed at each of its two deliveries, is in each service's
        # dead letters, on the dead-letter list's own node.
        with cluster.client() as connection:
            for name in NAMES:
                key = protocol.dead_letter_key(name)
                wait_until(lambda key=key: connection.llen(key) == 1, 20, f"{name}'s dead letter")
                [letter] = connection.lrange(key, 0, -1)
                assert '"stream":"rpc:stream:{orders}"' in letter.replace(" ", "")
            # rpc-admin dead requeue puts it back in its stream, on another node than
            # the dead letters, for its service alone: handled (and failed) again there.
            [listed] = list_dead_letters(connection, "ledger")
            assert listed.queue == wire.stream_key("orders")
            assert requeue_dead_letters(connection, "ledger").requeued == 1
            wait_until(lambda: connection.llen(protocol.dead_letter_key("ledger")) == 1, 20)
        poisoned = [entry for entry in seen.entries if entry[2] == "poison"]
        assert sorted(name for name, *_ in poisoned).count("ledger") == 4
        assert sorted(name for name, *_ in poisoned).count("warehouse") == 2
    poisoned = [entry for entry in seen.entries if entry[2] == "poison"]
    assert sorted((name, delivery) for name, _, _, delivery in poisoned) == [
        ("ledger", 1),
        ("ledger", 1),
        ("ledger", 2),
        ("ledger", 2),
        ("warehouse", 1),
        ("warehouse", 2),
    ]
    # Nothing left pending: every event was acknowledged, in its stream's slot.
    with cluster.client() as connection:
        for topic in TOPICS:
            for group in NAMES:
                assert connection.xpending(wire.stream_key(topic), group)["pending"] == 0


def test_a_publish_taken_by_any_node_reaches_the_subscribed_worker(
    cluster: EmbeddedCluster,
) -> None:
    heard: list[Any] = []
    radio = Service("radio")
    channels = ("news", "weather", "traffic", "sports")

    @radio.subscribe(pattern="*")
    def on_anything(data: Any) -> None:
        heard.append(data)

    owners = {cluster.node_for_key(wire.channel_name(channel)).port for channel in channels}
    assert len(owners) >= 2  # the PUBLISHes go to different nodes
    with serve_in_thread(radio, cluster.url, concurrency=2):
        with Client(cluster.url) as client:
            counts = [client.publish(channel, channel) for channel in channels]

        async def publish_async() -> int:
            async with AsyncClient(cluster.url) as aclient:
                return await aclient.publish("news", "again")

        counts.append(asyncio.run(publish_async()))
        wait_until(lambda: sorted(heard) == sorted([*channels, "again"]), 10, "every message")
        # A PUBLISH taken by a node the worker is not connected to still reaches it,
        # broadcast over the cluster bus; it counts the subscribers of that node alone.
        elsewhere = [node for node in cluster.primaries() if not subscribed_here(node)]
        assert len(elsewhere) == 2
        for node in elsewhere:
            with connect(node) as connection:
                body = wire.encode_event(f"via {node.port}", None)
                assert connection.publish(wire.channel_name("news"), body) == 0
        wait_until(lambda: len(heard) == len(channels) + 3, 10, "the broadcast messages")
    assert all(count in (0, 1) for count in counts)


def subscribed_here(node: EmbeddedRedis) -> bool:
    with connect(node) as connection:
        return any(int(entry.get("psub") or 0) for entry in connection.client_list())


def test_a_stream_of_items_on_a_cluster_reads_in_order_with_both_clients(
    cluster: EmbeddedCluster,
) -> None:
    litter = Service("litter")

    @litter.method
    def kittens(count: int) -> Iterator[int]:
        yield from range(count)

    @litter.method
    def plain(count: int) -> int:
        return count

    with serve_in_thread(litter, cluster.url, concurrency=2):
        with Client(cluster.url) as client:
            assert list(client.proxy("litter").stream.kittens(500)) == list(range(500))
            assert client.proxy("litter").plain(3) == 3

        async def read_async() -> list[int]:
            async with AsyncClient(cluster.url) as aclient:
                return [item async for item in aclient.proxy("litter").stream.kittens(300)]

        assert asyncio.run(read_async()) == list(range(300))
