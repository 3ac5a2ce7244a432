"""Key names: queues, reply keys, dead letters, in-progress lists, heartbeats and the
registry, with the hash tags that keep each service's keys in one cluster slot."""

from __future__ import annotations

from .constants import DEFAULT_PREFIX

#
# A service's keys carry its name as a Redis Cluster hash tag (``rpc:queue:{calculator}``):
# only the part in braces is hashed, so the queue, its dead letters and every in-progress
# list taken from it share one hash slot, and each multi-key step (BLMOVE into an
# in-progress list, the recovery script) stays on one node. On a single node a tag is
# just two characters of the name.


def hash_tag(service: str) -> str:
    """``{service}``: the part of a service's keys Redis Cluster hashes."""
    return f"{{{service}}}"


def slot_tag(key: str) -> str:
    """What Redis Cluster hashes of ``key``: its first non-empty ``{...}``, else all of
    it. Keys named ``...{slot_tag(key)}...`` share ``key``'s hash slot."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def queue_key(service: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The list a service's requests are pushed onto: ``rpc:queue:{calculator}``."""
    return f"{prefix}:queue:{hash_tag(service)}"


def queue_namespace(prefix: str = DEFAULT_PREFIX) -> str:
    """Every default queue key starts with this; replies are never pushed under it."""
    return f"{prefix}:queue:"


def reply_key(token: str, prefix: str = DEFAULT_PREFIX) -> str:
    """A reply key for one client's many calls; the token makes it unique."""
    return f"{reply_namespace(prefix)}{token}"


def reply_namespace(prefix: str = DEFAULT_PREFIX) -> str:
    """Reply keys under this may be shared by many calls; see :func:`reply_key_may_exist`."""
    return f"{prefix}:reply:"


def call_reply_key(queue: str, token: str, prefix: str = DEFAULT_PREFIX) -> str:
    """A reply key for one call to ``queue``, in the queue's hash slot:
    ``rpc:reply:{calculator}:<token>``. On a cluster the push and the wait then go to one
    node in one round trip, and the worker's reply to the node it popped from."""
    return f"{prefix}:reply:{hash_tag(slot_tag(queue))}:{token}"


def dead_letter_key(service: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The list where a service's undeliverable messages are kept, newest last."""
    return f"{prefix}:dead:{hash_tag(service)}"


def in_progress_key(worker_id: str, queue: str, prefix: str = DEFAULT_PREFIX) -> str:
    """A reliable worker's list of the requests it has taken from ``queue`` and not
    answered, in ``queue``'s hash slot (BLMOVE moves between the two)."""
    return f"{prefix}:inprogress:{hash_tag(slot_tag(queue))}:{worker_id}"


def heartbeat_key(worker_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Exists, with a short expiry, while a worker is alive."""
    return f"{prefix}:worker:{worker_id}"


def queue_heartbeat_key(worker_id: str, queue: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Exists, with a short expiry, while a reliable worker taking from ``queue`` is
    alive: one per such queue, in the queue's hash slot, so that the recovery script
    reads it beside the lists it recovers (on a cluster, keys of one slot only)."""
    return f"{prefix}:worker:{hash_tag(slot_tag(queue))}:{worker_id}"


def worker_registry_key(prefix: str = DEFAULT_PREFIX) -> str:
    """Hash of reliable workers: id -> JSON naming the queues they take requests from."""
    return f"{prefix}:workers"


def deliveries_key(queue: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Hash counting how often each request recovered to ``queue`` was delivered (by the
    SHA-1 of its bytes), in ``queue``'s hash slot (the recovery script writes both)."""
    return f"{prefix}:deliveries:{hash_tag(slot_tag(queue))}"
