"""The service ``python -m bench.events_drain`` runs: one durable handler on the topic
``drain``, which does nothing (``--handler noop``) or RPUSHes the event to an
acknowledgement list on a redis-py connection of its own, as the floor does
(``--handler rpush``; ``$BENCH_DRAIN_HANDLER``)."""

from __future__ import annotations

import os

import redis

from rpc_redis import Service

service = Service("bench_drain")
ACK = "bench:ack:drain"
NOOP = os.environ.get("BENCH_DRAIN_HANDLER") == "noop"  # read once: os.environ is slow
_connection: redis.Redis | None = None


@service.on("drain")
def drained(payload: str) -> None:
    global _connection
    if NOOP:
        return
    if _connection is None:
        _connection = redis.Redis.from_url(os.environ["RPC_REDIS_URL"], socket_timeout=None)
    _connection.rpush(ACK, payload)
