"""The wire rules of events, sans I/O: channel and stream names, the event envelope,
stream entries, and the dead letters of durable events.

Clients (``publish``, ``emit``), the worker (its subscriber and its consumers) and
``rpc-admin`` all build and read events here, so each rule exists once, and
docs/protocol.md §11 describes exactly this module.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from .. import protocol

# An emit trims its stream to about this many entries (XADD MAXLEN ~), so that a topic
# nobody consumes cannot grow without bound.
DEFAULT_STREAM_MAXLEN = 100_000
# The stream entry's fields: the event envelope, and, for an event requeued from a
# service's dead letters, the one service that is to handle it again.
EVENT_FIELD = "event"
FOR_FIELD = "for"

_GLOB_SPECIALS = "\\*?[]"


# -- names ----------------------------------------------------------------------------


def channel_name(channel: str, prefix: str = protocol.DEFAULT_PREFIX) -> str:
    """The Redis pub/sub channel of an event channel: ``rpc:channel:sms_replies``."""
    return f"{prefix}:channel:{channel}"


def channel_pattern(pattern: str, prefix: str = protocol.DEFAULT_PREFIX) -> str:
    """The PSUBSCRIBE pattern for a channel pattern (``sms.*``): the prefix is escaped,
    so that only the part the handler gave is a glob."""
    escaped = "".join(f"\\{char}" if char in _GLOB_SPECIALS else char for char in prefix)
    return f"{escaped}:channel:{pattern}"


def event_channel(redis_channel: str, prefix: str = protocol.DEFAULT_PREFIX) -> str:
    """The event channel a Redis channel stands for (the inverse of channel_name)."""
    head = f"{prefix}:channel:"
    return redis_channel[len(head) :] if redis_channel.startswith(head) else redis_channel


def stream_key(topic: str, prefix: str = protocol.DEFAULT_PREFIX) -> str:
    """The stream of a durable topic: ``rpc:stream:{orders}``. Its consumer groups (one
    per service) live inside it, so every step on them names one key, in one slot."""
    if not topic or "{" in topic or "}" in topic:
        raise ValueError(f"a topic must be a non-empty name without braces, not {topic!r}")
    return f"{prefix}:stream:{protocol.hash_tag(topic)}"


# -- the envelope ---------------------------------------------------------------------


def encode_event(data: Any, meta: dict[str, str] | None = None) -> bytes:
    """An event as published or emitted: ``{"v":1,"data":...,"meta":{...}}``."""
    envelope: dict[str, Any] = {"v": protocol.ENVELOPE_VERSION, "data": data}
    if meta:
        envelope["meta"] = meta
    return protocol.dumps(envelope)


NO_META: Mapping[str, str] = MappingProxyType({})


class Event(NamedTuple):
    """An event as received: its data and the publisher's middleware ``meta``. (A
    tuple: one is made per event, at a fraction of a frozen dataclass's cost.)"""

    data: Any
    meta: Mapping[str, str] = NO_META


# A NamedTuple's constructor is a Python function around this; the per-event paths call
# it straight, as ``_tuple(Event, (data, meta))``.
_tuple = tuple.__new__


def decode_event(raw: bytes, max_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES) -> Event | str:
    """The event in a message, or why it cannot be handled (a reason for a log line or
    a dead letter). An object with ``v`` and ``data`` members is an envelope; any other
    JSON value is the data itself, as a publisher in another language may send it."""
    if len(raw) > max_bytes:
        return f"event of {len(raw)} bytes exceeds the limit of {max_bytes}"
    try:
        document = protocol.loads(raw)
    except ValueError as exc:
        return f"not valid JSON: {exc}"
    if not (isinstance(document, dict) and "v" in document and "data" in document):
        return _tuple(Event, (document, NO_META))
    version = document["v"]
    if type(version) is not int or version != protocol.ENVELOPE_VERSION:
        return f"unsupported envelope version {protocol.dumps(version).decode()}"
    meta = document.get("meta")
    if meta is None:
        return _tuple(Event, (document["data"], NO_META))
    problem = protocol.meta_problem(meta)
    if problem is not None:
        return problem
    return _tuple(Event, (document["data"], meta))


# -- commands -------------------------------------------------------------------------


def publish_command(channel: str, body: bytes, prefix: str) -> tuple[Any, ...]:
    return ("PUBLISH", channel_name(channel, prefix), body)


def emit_command(topic: str, body: bytes, prefix: str, maxlen: int) -> tuple[Any, ...]:
    """XADD with an approximate trim: Redis trims whole macro nodes, so the stream keeps
    at least ``maxlen`` entries, and a little more, at a fraction of an exact trim's cost."""
    if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1:
        raise ValueError(f"maxlen must be a positive integer, not {maxlen!r}")
    key = stream_key(topic, prefix)
    return ("XADD", key, "MAXLEN", "~", maxlen, "*", EVENT_FIELD, body)


# -- stream entries -------------------------------------------------------------------


class Entry(NamedTuple):
    """One stream entry as a consumer got it; ``raw`` None if it has no event field. (A
    tuple: one is made per event, at a fraction of a frozen dataclass's cost.)"""

    id: str
    raw: bytes | None
    target: str | None = None  # the one service to handle it, if requeued
    delivery_count: int = 1


_EVENT_BYTES = EVENT_FIELD.encode()
_EVENT_NAMES = (EVENT_FIELD, _EVENT_BYTES)
_FOR_NAMES = (FOR_FIELD, FOR_FIELD.encode())


def entry_from_fields(entry_id: Any, fields: Any, delivery_count: int = 1) -> Entry:
    """An entry from its id and its fields, as Redis answers them (a flat list of names
    and values, or a map)."""
    ident = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    if isinstance(fields, dict):
        pairs: Any = fields.items()
    else:
        items = fields or []
        pairs = zip(items[::2], items[1::2], strict=False)
    raw: Any = None
    target: Any = None
    for name, value in pairs:
        if name in _EVENT_NAMES:
            raw = value
        elif name in _FOR_NAMES:
            target = value
    return Entry(
        ident,
        raw if isinstance(raw, bytes) else (raw.encode() if isinstance(raw, str) else None),
        _text(target) if target is not None else None,
        delivery_count,
    )


def entries_read(response: Any) -> list[Entry]:
    """The entries of one stream in an XREADGROUP answer (nil when it timed out)."""
    if not response:
        return []
    streams = list(response.values()) if isinstance(response, dict) else [r[1] for r in response]
    # The usual entry (one event field, as emit writes it) is made right here: a call of
    # entry_from_fields apiece costs, in a read of 64.
    return [
        _tuple(Entry, (entry_id.decode(), fields[1], None, 1))
        if type(fields) is list
        and len(fields) == 2
        and fields[0] == _EVENT_BYTES
        and type(fields[1]) is bytes
        and type(entry_id) is bytes
        else entry_from_fields(entry_id, fields)
        for entry_id, fields in streams[0] or []
    ]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- dead letters -----------------------------------------------------------------------


def encode_event_dead_letter(
    raw: bytes | None, reason: str, stream: str, group: str, entry: Entry, at: float
) -> bytes:
    """A durable event's dead-letter entry, in its service's dead-letter list: where it
    came from (``stream``, ``group``, ``id``), how often it came, and the event as it
    was, so that ``rpc-admin dead requeue`` can put it back in its stream."""
    letter: dict[str, Any] = {
        "reason": reason,
        "stream": stream,
        "group": group,
        "id": entry.id,
        "deliveries": entry.delivery_count,
        "time": round(at, 6),
    }
    if raw is not None:
        try:
            letter["message"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            letter["message_base64"] = base64.b64encode(raw).decode("ascii")
    return protocol.dumps(letter)


def requeue_fields(letter: dict[str, Any]) -> dict[str, str] | None:
    """The fields of the entry that puts a dead event back in its stream, for its
    service alone; None if the letter is not a readable event's."""
    group, message = letter.get("group"), letter.get("message")
    if not all(isinstance(value, str) and value for value in (letter.get("stream"), group)):
        return None
    if not isinstance(message, str):
        return None
    return {EVENT_FIELD: message, FOR_FIELD: str(group)}
