"""Event handlers and generator methods for the event tests, run by real rpc-worker
processes (``rpc-worker tests.event_service:billing``) and in threads alike. Each one
records what it saw in the Redis at $RPC_REDIS_URL, so that a test can wait for it.

- ``test:news`` gets ``{"pid", "data", "channel"}`` for each pub/sub message;
- ``test:handled:<service>`` gets ``{"pid", "order", "delivery"}`` for each event;
- an order with ``"hold": true``, at its first delivery, sets ``test:holding:<id>`` to
  the pid and then waits (for a kill) up to a minute; while ``test:broken:<service>``
  exists, that service's handler fails; ``test:slow:<service>`` holds seconds each of
  its events takes;
- ``kittens`` sets ``test:kittens:produced`` as it yields and ``test:kittens:closed``
  when it is closed or ends.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import redis

from rpc_redis import Service, current_call

_store: redis.Redis | None = None


def store() -> redis.Redis:
    global _store
    if _store is None:
        _store = redis.Redis.from_url(os.environ["RPC_REDIS_URL"])
    return _store


def record(key: str, entry: dict[str, Any]) -> None:
    """RPUSH, retried while Redis restarts: what a handler saw is recorded, even then."""
    deadline = time.monotonic() + 10
    while True:
        try:
            store().rpush(key, json.dumps(entry))
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


listener = Service("listener")


@listener.subscribe("news")
def on_news(data: Any) -> None:
    call = current_call()
    channel = call.event if call is not None else None
    record("test:news", {"pid": os.getpid(), "data": data, "channel": channel})


def record_order(service: str, order: Any) -> None:
    call = current_call()
    assert call is not None
    entry = {"pid": os.getpid(), "order": order, "delivery": call.delivery_count}
    record(f"test:handled:{service}", entry)
    if isinstance(order, dict) and order.get("hold") and call.delivery_count == 1:
        store().set(f"test:holding:{order['id']}", os.getpid())
        time.sleep(60)
    pause = store().get(f"test:slow:{service}")
    if pause:
        time.sleep(float(pause))
    if store().exists(f"test:broken:{service}"):
        raise ValueError(f"{service} is broken")


billing = Service("billing")
shipping = Service("shipping")


@billing.on("orders")
def bill(order: Any) -> None:
    record_order("billing", order)


@shipping.on("orders")
def ship(order: Any) -> None:
    record_order("shipping", order)


cats = Service("cats")


@cats.method
def kittens(count: int, pause: float = 0.0) -> Iterator[int]:
    connection = store()
    try:
        for number in range(count):
            connection.set("test:kittens:produced", number + 1)
            yield number
            if pause:
                time.sleep(pause)
    finally:
        connection.set("test:kittens:closed", 1)


def handled(connection: redis.Redis, service: str) -> list[dict[str, Any]]:
    """What a service's handler recorded, oldest first."""
    return [json.loads(raw) for raw in connection.lrange(f"test:handled:{service}", 0, -1)]
