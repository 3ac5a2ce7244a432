"""The service the events benchmark runs: ``rpc-worker bench.event_service``.

Its event handlers do what the floors do for each event (bench/events_floor.py): RPUSH
it to an acknowledgement list the caller BLPOPs, on a redis-py connection of their own.
Its stream yields a payload as many times as asked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import redis

from rpc_redis import Service

service = Service("bench_events")
PUBSUB_ACK = "bench:ack:pubsub:rpc"
DURABLE_ACK = "bench:ack:durable:rpc"

_connection: redis.Redis | None = None


def acknowledge(ack: str, payload: str) -> None:
    global _connection
    if _connection is None:
        _connection = redis.Redis.from_url(os.environ["RPC_REDIS_URL"], socket_timeout=None)
    _connection.rpush(ack, payload)


@service.subscribe("bench")
def published(payload: str) -> None:
    acknowledge(PUBSUB_ACK, payload)


@service.on("bench")
def emitted(payload: str) -> None:
    acknowledge(DURABLE_ACK, payload)


@service.method
def items(count: int, payload: str) -> Iterator[str]:
    for _ in range(count):
        yield payload
