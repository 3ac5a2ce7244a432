"""Hostile messages: what anyone who can push onto a served queue might push.

One generator for the long fuzz run (``bench/fuzz.py``, drawing from ``random``) and
the fuzz test of the suite (``tests/test_fuzz.py``, drawing from hypothesis), so that
both try the same attacks. Each message says what it may end in (a reply on the fresh
reply key it names, a dead letter, or nothing) and which keys of others it names, so
that a run can check the rules of issue 12: every message with a usable reply key
gets a reply or a dead letter, and no key holding someone else's data changes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import orjson
import redis

from rpc_redis import protocol

T = TypeVar("T")

REPLY = "reply"
DEAD_LETTER = "dead letter"
NOTHING = "nothing"
ANSWERED = frozenset({REPLY, DEAD_LETTER})  # with a usable reply key: never nothing
SERVICE = "calculator"
QUEUE = protocol.queue_key(SERVICE)
DEAD = protocol.dead_letter_key(SERVICE)

# Keys of others a message may name as its reply key, made before a run: they must be
# left exactly as they were (value and expiry).
FOREIGN: dict[str, tuple[str, Callable[[redis.Redis, str], object]]] = {
    "app:todo": ("list", lambda r, k: r.rpush(k, "buy milk", "call mum")),
    "celery": ("list", lambda r, k: (r.rpush(k, '{"task": "x"}'), r.pexpire(k, 3_600_000))),
    "other:queue:jobs": ("list", lambda r, k: r.rpush(k, "a job of another deployment")),
    protocol.queue_key("other"): ("list", lambda r, k: r.rpush(k, '{"jsonrpc":"2.0"}')),
    "app:config": ("string", lambda r, k: r.set(k, "precious")),
    "rpc:reply:a-string": ("string", lambda r, k: r.set(k, "not a list")),
    "app:users": ("hash", lambda r, k: r.hset(k, "alice", "admin")),
    "app:tags": ("set", lambda r, k: r.sadd(k, "a", "b")),
    "app:scores": ("zset", lambda r, k: r.zadd(k, {"alice": 1})),
    "app:events": ("stream", lambda r, k: r.xadd(k, {"event": "login"})),
}
# The library's own keys, and queues: never a reply key.
OWN = [
    DEAD,
    protocol.worker_registry_key(),
    protocol.in_progress_key("w", QUEUE),
    protocol.deliveries_key(QUEUE),
    protocol.heartbeat_key("w"),
]
QUEUES = [QUEUE, protocol.queue_key("other"), "rpc:queue:", "rpc:queue:\n"]
CONTROL = ["\n", "\r", "\x00", "\x1b[2K", "\u2028", "\u202e", "\t", "\x85"]


class Source(Protocol):
    """Where the choices come from: a seeded random.Random, or hypothesis."""

    def integer(self, low: int, high: int) -> int: ...

    def pick(self, options: Sequence[T]) -> T: ...

    def data(self, size: int) -> bytes: ...


@dataclass(frozen=True)
class Limits:
    """The worker's, so that the messages straddle them."""

    max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES
    max_batch: int = protocol.DEFAULT_MAX_BATCH
    reply_bomb: int = 10**8  # the most characters a reply bomb asks for


@dataclass(frozen=True)
class Hostile:
    kind: str
    raw: bytes
    ends: frozenset[str]  # what it may end in
    reply_key: str | None = None  # the fresh key a reply must be on, if it gets one
    names: tuple[str, ...] = ()  # keys of others it names

    def __repr__(self) -> str:  # a failure report stays readable when raw is huge
        shown = self.raw if len(self.raw) <= 200 else self.raw[:200] + b"..."
        return f"Hostile({self.kind}, {shown!r} ({len(self.raw)} bytes), {sorted(self.ends)})"


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8", "surrogatepass")


def call(method: Any, params: Any, request_id: Any = None) -> dict[str, Any]:
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if request_id is not None:
        request["id"] = request_id
    return request


def envelope(request: Any, reply_to: Any, **members: Any) -> bytes:
    return dumps({"v": 1, "reply_to": reply_to, "request": request, **members})


def fresh_key(source: Source, n: int) -> str:
    """A key nobody has: under the reply namespace, or outside it as a bare id is."""
    return source.pick([f"rpc:reply:fuzz-{n}", f"fuzz-{n}"])


def readable(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except ValueError:
        return False
    return True


# -- the attacks ----------------------------------------------------------------------


def random_bytes(source: Source, n: int, limits: Limits) -> Hostile:
    raw = source.data(source.integer(0, 300))
    return Hostile(
        "random bytes", raw, frozenset({DEAD_LETTER}) if not readable(raw) else ANSWERED | {NOTHING}
    )


def invalid_utf8(source: Source, n: int, limits: Limits) -> Hostile:
    key = fresh_key(source, n)
    bad = source.pick([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
    raw = (
        b'{"jsonrpc":"2.0","method":"add' + bad + b'","params":[1,2],"id":"' + key.encode() + b'"}'
    )
    return Hostile("invalid UTF-8", raw, frozenset({DEAD_LETTER}))


def deep_nesting(source: Source, n: int, limits: Limits) -> Hostile:
    key = fresh_key(source, n)
    depth = source.integer(200, 1100)
    nested = "[" * depth + "]" * depth
    shape = source.pick(["result", "params", "request", "objects"])
    if shape == "result":  # add(nested, []) returns it: a reply nested as deep
        text = f'{{"jsonrpc":"2.0","method":"add","params":[{nested},[]],"id":"{key}"}}'
    elif shape == "params":  # div(nested, 0): an error whose data is nested as deep
        divide = f'{{"jsonrpc":"2.0","method":"div","params":[{nested},0],"id":1}}'
        text = f'{{"v":1,"reply_to":"{key}","request":{divide}}}'
    elif shape == "request":
        text = f'{{"v":1,"reply_to":"{key}","request":{nested}}}'
    else:
        objects = '{"a":' * depth + "1" + "}" * depth
        text = f'{{"v":1,"reply_to":"{key}","request":{objects}}}'
    raw = text.encode()
    if not readable(raw):  # past the parser's depth: no reply key can be read
        return Hostile("deep nesting", raw, frozenset({DEAD_LETTER}))
    return Hostile("deep nesting", raw, ANSWERED, key)


def huge_string(source: Source, n: int, limits: Limits) -> Hostile:
    key = fresh_key(source, n)
    size = source.integer(limits.max_message_bytes // 4, limits.max_message_bytes + 1000)
    text = source.pick(["x", "é", "€"]) * (size // 3)
    where = source.pick(["method", "params", "id", "reply_to", "meta"])
    if where == "method":
        return Hostile("huge string", envelope(call(text, [], 1), key), frozenset({REPLY}), key)
    if where == "params":
        return Hostile(
            "huge string", envelope(call("add", [text, "y"], 1), key), frozenset({REPLY}), key
        )
    if where == "meta":
        raw = envelope(call("add", [1, 2], 1), key, meta={"trace": text})
        return Hostile("huge string", raw, frozenset({REPLY}), key)
    if where == "id":  # a bare request's reply key far too long
        return Hostile("huge string", dumps(call("add", [1, 2], text)), frozenset({DEAD_LETTER}))
    return Hostile("huge string", envelope(call("add", [1, 2], 1), text), frozenset({DEAD_LETTER}))


def huge_batch(source: Source, n: int, limits: Limits) -> Hostile:
    key = fresh_key(source, n)
    most = max(limits.max_batch + 1, min(limits.max_message_bytes // 3, 200_000))
    count = source.integer(limits.max_batch + 1, most)
    items = b"[" + b",".join([b"1"] * count) + b"]"
    if source.pick([True, False]):  # no reply key to refuse it on
        return Hostile("huge batch", items, frozenset({DEAD_LETTER}))
    raw = b'{"v":1,"reply_to":"' + key.encode() + b'","request":' + items + b"}"
    return Hostile("huge batch", raw, frozenset({REPLY}), key)  # too large, said so


def full_batch(source: Source, n: int, limits: Limits) -> Hostile:
    """A batch of exactly the limit, of real calls: served."""
    key = fresh_key(source, n)
    batch = [call("add", [i, i], i) for i in range(limits.max_batch)]
    return Hostile("full batch", envelope(batch, key), frozenset({REPLY}), key)


def wrong_types(source: Source, n: int, limits: Limits) -> Hostile:
    key = fresh_key(source, n)
    odd: list[Any] = [None, True, 0, -1, 1.5, "", "1", [], {}, [1], {"a": 1}, 2**70]
    member = source.pick(["v", "reply_to", "deadline", "meta", "request", "id", "params"])
    value = source.pick(odd)
    if member == "reply_to":
        if (isinstance(value, str) and value) or value is None:
            value = 0  # those are usable, or mean "no reply key"
        raw = envelope(call("add", [1, 2], 1), value)
        return Hostile("wrong types", raw, frozenset({DEAD_LETTER}))
    if member == "request":
        return Hostile("wrong types", envelope(value, key), ANSWERED, key)
    if member in ("id", "params"):
        request = call("add", [1, 2], 1)
        request[member] = value
        return Hostile("wrong types", envelope(request, key), ANSWERED, key)
    if member == "deadline" and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = "soon"  # a number is a deadline, and one passed ends in nothing
    raw = envelope(call("add", [1, 2], 1), key, **{member: value})
    return Hostile("wrong types", raw, ANSWERED, key)


def names_a_queue(source: Source, n: int, limits: Limits) -> Hostile:
    target = source.pick(QUEUES)
    message = source.pick(
        [dumps(call("add", [1, 2], target)), envelope(call("add", [1, 2], 1), target)]
    )
    names = (target,) if target in FOREIGN else ()
    return Hostile("reply key names a queue", message, frozenset({DEAD_LETTER}), None, names)


def names_a_foreign_key(source: Source, n: int, limits: Limits) -> Hostile:
    target = source.pick(sorted(FOREIGN))
    message = source.pick(
        [dumps(call("mul", [6, 7], target)), envelope(call("mul", [6, 7], 1), target)]
    )
    return Hostile(
        "reply key names a foreign key", message, frozenset({DEAD_LETTER}), None, (target,)
    )


def names_an_own_key(source: Source, n: int, limits: Limits) -> Hostile:
    target = source.pick(OWN)
    message = source.pick(
        [dumps(call("add", [1, 2], target)), envelope(call("add", [1, 2], 1), target)]
    )
    return Hostile("reply key names the library's own key", message, frozenset({DEAD_LETTER}))


def control_characters(source: Source, n: int, limits: Limits) -> Hostile:
    forged = source.pick(CONTROL) + "2026-01-01 00:00:00 INFO rpc_redis.worker: forged"
    key = fresh_key(source, n) + source.pick(["", *CONTROL])
    where = source.pick(["method", "params", "version", "raise"])
    if where == "method":
        request = call("nope" + forged, [], key)
    elif where == "params":
        request = call("add", {"a" + forged: 1, "b": 2}, key)
    elif where == "raise":
        request = call("add", [forged, 1], key)  # str + int: the handler raises
    else:
        return Hostile(
            "control characters",
            envelope(call("add", [1, 2], 1), key, v=forged),
            frozenset({REPLY}),
            key,
        )
    return Hostile("control characters", dumps(request), frozenset({REPLY}), key)


def reply_bomb(source: Source, n: int, limits: Limits) -> Hostile:
    key = fresh_key(source, n)
    times = source.integer(limits.reply_bomb // 100, limits.reply_bomb)
    return Hostile("reply bomb", dumps(call("mul", ["x", times], key)), frozenset({REPLY}), key)


def sleep_bomb(source: Source, n: int, limits: Limits) -> Hostile:
    key = fresh_key(source, n)
    shape = source.pick(["over the cap", "notification with a deadline", "call with a deadline"])
    if shape == "over the cap":  # the calculator refuses it at once
        seconds = source.pick([1e9, 61, -1, float(2**63)])
        return Hostile("sleep bomb", dumps(call("sleep", [seconds], key)), frozenset({REPLY}), key)
    deadline = time.time() + source.integer(1, 5) / 10
    if shape == "notification with a deadline":
        raw = dumps({"v": 1, "deadline": deadline, "request": call("sleep", [59])})
        return Hostile("sleep bomb", raw, frozenset({NOTHING}))
    raw = envelope(call("sleep", [59], 1), key, deadline=deadline)
    return Hostile("sleep bomb", raw, frozenset({NOTHING}), key)  # cut short at its deadline


def bad_requests(source: Source, n: int, limits: Limits) -> Hostile:
    key = fresh_key(source, n)
    request = source.pick(
        [
            call("pow", [2, 8], key),
            call("add", [1], key),
            call("add", {"x": 1}, key),
            call("div", [1, 0], key),
            {"method": "add", "params": [1, 2], "id": key},
            call("add", [[1], [2]], key),
        ]
    )
    return Hostile("bad requests", dumps(request), frozenset({REPLY}), key)


# How often each comes, out of the sum: the costly ones (a reply bomb allocates up to
# 100 MB; a sleep bomb holds a slot a second or so) are rare, so that the real calls
# of a run go on among them.
ATTACKS: list[tuple[Callable[[Source, int, Limits], Hostile], int]] = [
    (random_bytes, 50),
    (invalid_utf8, 30),
    (deep_nesting, 40),
    (huge_string, 10),
    (huge_batch, 10),
    (full_batch, 3),
    (wrong_types, 60),
    (names_a_queue, 40),
    (names_a_foreign_key, 60),
    (names_an_own_key, 30),
    (control_characters, 50),
    (reply_bomb, 1),
    (sleep_bomb, 2),
    (bad_requests, 50),
]
WEIGHTED = [attack for attack, weight in ATTACKS for _ in range(weight)]


def hostile_message(source: Source, n: int, limits: Limits = Limits()) -> Hostile:
    """The ``n``-th hostile message (``n`` makes its fresh reply key unique)."""
    return source.pick(WEIGHTED)(source, n, limits)


# -- what a run checks ------------------------------------------------------------------


def make_foreign_keys(connection: redis.Redis) -> None:
    for key, (_, make) in FOREIGN.items():
        make(connection, key)


def snapshot(connection: redis.Redis) -> dict[str, tuple[bytes | None, bool]]:
    """Each foreign key's value (DUMP) and whether it has an expiry."""
    return {key: (connection.dump(key), connection.pttl(key) > 0) for key in FOREIGN}  # type: ignore[misc]


def changed(before: dict[str, tuple[bytes | None, bool]], connection: redis.Redis) -> list[str]:
    after = snapshot(connection)
    return sorted(key for key in before if before[key] != after[key])


def dead_letter_messages(connection: redis.Redis) -> set[bytes]:
    return {protocol.decode_dead_letter(entry)["raw"] for entry in connection.lrange(DEAD, 0, -1)}


def outcome(connection: redis.Redis, message: Hostile, dead: set[bytes]) -> str:
    """What ``message`` ended in, seen from Redis."""
    if message.reply_key is not None and connection.exists(message.reply_key):
        return REPLY
    if message.raw in dead:
        return DEAD_LETTER
    return NOTHING
