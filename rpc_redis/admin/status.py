"""What runs: the registered workers, and each service's queue, workers and backlog.

The functions read the worker registry (``worker/registry.py``) with any redis-py
client, so they serve Python as well as ``rpc-admin workers`` and ``rpc-admin status``.
Each command names one key, so they work on a Redis Cluster too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from .. import protocol
from ..worker.registry import parse_entry, text


@dataclass(frozen=True)
class WorkerInfo:
    """One registered worker; ``alive`` while its heartbeat lasts."""

    id: str
    alive: bool
    host: str = "?"
    pid: int | None = None
    started: float | None = None
    seen: float | None = None
    queues: dict[str, str] = field(default_factory=dict)  # queue -> service
    reliable: list[str] = field(default_factory=list)
    concurrency: int | None = None
    in_flight: int = 0
    served: dict[str, int] = field(default_factory=dict)  # by queue
    rate: dict[str, float] = field(default_factory=dict)  # calls/s by queue, lately

    @classmethod
    def from_entry(cls, worker_id: str, entry: dict[str, Any] | None, alive: bool) -> WorkerInfo:
        """Tolerant of entries written by another version, or by hand."""
        entry = entry or {}

        def typed(name: str, kind: type | tuple[type, ...], default: Any) -> Any:
            value = entry.get(name, default)
            return value if isinstance(value, kind) and not isinstance(value, bool) else default

        return cls(
            id=worker_id,
            alive=alive,
            host=str(typed("host", str, "?")),
            pid=typed("pid", int, None),
            started=typed("started", (int, float), None),
            seen=typed("seen", (int, float), None),
            queues=typed("queues", dict, {}),
            reliable=typed("reliable", list, []),
            concurrency=typed("concurrency", int, None),
            in_flight=typed("in_flight", int, 0),
            served=typed("served", dict, {}),
            rate=typed("rate", dict, {}),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "alive": self.alive,
            "host": self.host,
            "pid": self.pid,
            "started": self.started,
            "seen": self.seen,
            "queues": self.queues,
            "reliable": self.reliable,
            "concurrency": self.concurrency,
            "in_flight": self.in_flight,
            "served": self.served,
            "rate": self.rate,
        }


def list_workers(
    connection: redis.Redis, prefix: str = protocol.DEFAULT_PREFIX
) -> list[WorkerInfo]:
    """Every registered worker, live or lost (an entry whose heartbeat is gone: a
    worker killed outright, until a live one prunes it), oldest first."""
    registry = connection.hgetall(protocol.worker_registry_key(prefix))
    ids = sorted(text(raw_id) for raw_id in registry)
    entries = {text(raw_id): parse_entry(raw) for raw_id, raw in registry.items()}
    with connection.pipeline(transaction=False) as pipe:
        for worker_id in ids:
            pipe.exists(protocol.heartbeat_key(worker_id, prefix))
        alive = pipe.execute() if ids else []
    workers = [
        WorkerInfo.from_entry(worker_id, entries[worker_id], bool(exists))
        for worker_id, exists in zip(ids, alive, strict=True)
    ]
    return sorted(workers, key=lambda worker: (worker.started or 0, worker.id))


@dataclass(frozen=True)
class ServiceStatus:
    """A service's queue as it stands: what waits, who serves it, what it has dropped."""

    service: str
    queue: str
    waiting: int
    dead_letters: int
    workers: list[WorkerInfo]  # alive
    lost: list[WorkerInfo]  # registered, heartbeat gone

    @property
    def in_flight(self) -> int:
        return sum(worker.in_flight for worker in self.workers)

    @property
    def rate(self) -> float:
        """Calls served per second lately, by all its live workers."""
        return round(sum(worker.rate.get(self.queue, 0.0) for worker in self.workers), 3)

    @property
    def flagged(self) -> bool:
        """Requests are waiting and no live worker serves the queue."""
        return self.waiting > 0 and not self.workers

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "queue": self.queue,
            "waiting": self.waiting,
            "in_flight": self.in_flight,
            "dead_letters": self.dead_letters,
            "rate": self.rate,
            "flagged": self.flagged,
            "workers": [worker.to_json() for worker in self.workers],
            "lost": [worker.to_json() for worker in self.lost],
        }


def service_status(
    connection: redis.Redis,
    prefix: str = protocol.DEFAULT_PREFIX,
    services: Iterable[str] = (),
    *,
    scan: bool = True,
) -> list[ServiceStatus]:
    """Every service known: named in ``services``, served by a registered worker, or
    (``scan``) with requests waiting in a default queue nobody registered for."""
    workers = list_workers(connection, prefix)
    queues: dict[str, str] = {}  # queue -> service
    for worker in workers:
        queues.update(worker.queues)
    for service in services:
        queues.setdefault(protocol.queue_key(service, prefix), service)
    if scan:
        for queue, service in waiting_queues(connection, prefix).items():
            queues.setdefault(queue, service)
    ordered = sorted(queues.items(), key=lambda item: (item[1], item[0]))
    with connection.pipeline(transaction=False) as pipe:
        for queue, service in ordered:
            pipe.llen(queue)
            pipe.llen(protocol.dead_letter_key(service, prefix))
        lengths = pipe.execute() if ordered else []
    return [
        ServiceStatus(
            service,
            queue,
            int(lengths[2 * index]),
            int(lengths[2 * index + 1]),
            [worker for worker in workers if worker.alive and queue in worker.queues],
            [worker for worker in workers if not worker.alive and queue in worker.queues],
        )
        for index, (queue, service) in enumerate(ordered)
    ]


def waiting_queues(
    connection: redis.Redis, prefix: str = protocol.DEFAULT_PREFIX
) -> dict[str, str]:
    """Default queues holding requests (an empty list is no key), by SCAN: queue -> service."""
    namespace = protocol.queue_namespace(prefix)
    found: dict[str, str] = {}
    for raw in connection.scan_iter(match=f"{namespace}*", count=1000, _type="list"):
        key = text(raw)
        service = key[len(namespace) :]
        if service.startswith("{") and service.endswith("}") and len(service) > 2:
            found[key] = service[1:-1]
    return found


def ago(moment: float | None, now: float | None = None) -> str:
    """'3s ago', '2m ago', '5h ago': for people reading a status."""
    if moment is None:
        return "-"
    seconds = max((time.time() if now is None else now) - moment, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"
