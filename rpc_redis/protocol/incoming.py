"""The worker's side, reading: envelopes and bare requests decoded and checked, reply
keys judged."""

from __future__ import annotations

import json
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    InvalidRequest,
    ParseError,
    RpcError,
)
from .calls import meta_problem
from .codec import loads
from .constants import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_PREFIX,
    ENVELOPE_VERSION,
    JSONRPC,
    MAX_REPLY_KEY_LENGTH,
)
from .keys import queue_namespace, reply_namespace


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message that is JSON and names its reply key (if any); its requests not yet checked."""

    payload: Any
    reply_to: str | None
    deadline: float | None
    enveloped: bool
    meta: dict[str, str] = field(default_factory=dict)
    # The envelope's ``stream`` member as sent (None: not a stream), which the worker's
    # streaming reads by the rules of ``events/streams.py``.
    stream: Any = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that cannot be dispatched: reply with ``error`` if a reply key is known."""

    reason: str
    error: RpcError
    reply_to: str | None = None
    request_id: Any = None


def decode_message(
    raw: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_batch: int = DEFAULT_MAX_BATCH
) -> Incoming | Rejected:
    """Turn a message popped off a queue into an :class:`Incoming` or a :class:`Rejected`.

    An envelope is a JSON object with a ``request`` member and no ``jsonrpc`` member;
    anything else is taken as a bare JSON-RPC request, whose string id names its reply
    key. A message over ``max_bytes``, or a batch of more than ``max_batch`` requests,
    is rejected whole, before anything in it runs.
    """
    too_large = len(raw) > max_bytes
    if len(raw) > unread_above(max_bytes):
        return _too_large(raw, max_bytes, None, None)
    try:
        document = loads(raw)
    except ValueError as exc:
        if too_large:
            return _too_large(raw, max_bytes, None, None)
        return Rejected(f"not valid JSON: {exc}", ParseError(data=str(exc)))
    if isinstance(document, dict) and "request" in document and "jsonrpc" not in document:
        incoming = _from_envelope(document)
    else:
        incoming = Incoming(document, bare_reply_key(document), None, enveloped=False)
    if too_large and isinstance(incoming, Incoming):
        return _too_large(raw, max_bytes, incoming.reply_to, first_request_id(incoming.payload))
    if (
        isinstance(incoming, Incoming)
        and isinstance(incoming.payload, list)
        and len(incoming.payload) > max_batch
    ):
        size = len(incoming.payload)
        reason = f"batch of {size} requests exceeds the limit of {max_batch}"
        error = InvalidRequest("Batch too large", data={"size": size, "limit": max_batch})
        return Rejected(reason, error, incoming.reply_to, None)
    return incoming


def unread_above(max_bytes: int) -> int:
    """The size past which a message over its limit is not even parsed: twice the limit,
    or the limit and 1 MiB if that is more. Below it, a message too large is read, for
    the reply key its error goes to, and kept whole in its dead letter (to be requeued
    once the limit is raised); past it, parsing would cost many times its size, and its
    dead letter keeps its first DEAD_LETTER_HEAD_BYTES."""
    return max(2 * max_bytes, max_bytes + 1024 * 1024)


def _too_large(raw: bytes, max_bytes: int, reply_to: str | None, request_id: Any) -> Rejected:
    reason = f"message of {len(raw)} bytes exceeds the limit of {max_bytes}"
    error = InvalidRequest("Request too large", data={"size": len(raw), "limit": max_bytes})
    return Rejected(reason, error, reply_to, request_id)


def _from_envelope(envelope: dict[str, Any]) -> Incoming | Rejected:
    reply_to = envelope.get("reply_to")
    if not isinstance(reply_to, str) or not reply_to:
        reply_to = None
    request_id = first_request_id(envelope["request"])
    version = envelope.get("v", ENVELOPE_VERSION)
    if type(version) is not int or version != ENVELOPE_VERSION:
        reason = f"unsupported envelope version {json.dumps(version)}"
        return Rejected(reason, InvalidRequest(data=reason), reply_to, request_id)
    if "reply_to" in envelope and reply_to is None and envelope["reply_to"] is not None:
        reason = "envelope reply_to must be a non-empty string"
        return Rejected(reason, InvalidRequest(data=reason), None, request_id)
    deadline = envelope.get("deadline")
    if deadline is not None and (
        not isinstance(deadline, (int, float)) or isinstance(deadline, bool)
    ):
        reason = "envelope deadline must be a number (seconds since the Unix epoch)"
        return Rejected(reason, InvalidRequest(data=reason), reply_to, request_id)
    meta = envelope.get("meta")
    stream = envelope.get("stream")
    if meta is None:
        return Incoming(envelope["request"], reply_to, deadline, enveloped=True, stream=stream)
    problem = meta_problem(meta)
    if problem is not None:
        return Rejected(problem, InvalidRequest(data=problem), reply_to, request_id)
    return Incoming(
        envelope["request"], reply_to, deadline, enveloped=True, meta=meta, stream=stream
    )


def bare_reply_key(document: Any) -> str | None:
    """A bare request replies to the key its id names: the first string id in a batch."""
    for item in document if isinstance(document, list) else [document]:
        if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]:
            return str(item["id"])
    return None


def first_request_id(payload: Any) -> Any:
    """The id for an error reply to a whole message: a single request's id, else null.

    A batch rejected whole gets one error with id null, as the spec has for a batch
    that cannot be read.
    """
    if isinstance(payload, dict):
        request_id = payload.get("id")
        if is_valid_id(request_id):
            return request_id
    return None


def expects_reply(payload: Any) -> bool:
    """True unless the payload is a valid notification or a batch of only those.

    Anything malformed counts as expecting a reply, since its error is one.
    """
    items = payload if isinstance(payload, list) else [payload]
    return not items or not all(is_valid_notification(item) for item in items)


def is_valid_notification(item: Any) -> bool:
    """A request object with no id that passes every rule of the spec (an array is not)."""
    return isinstance(item, dict) and "id" not in item and request_problem(item) is None


def reply_key_problem(
    reply_to: str, served_queues: Container[str], prefix: str = DEFAULT_PREFIX
) -> str | None:
    """Why a reply key must not be written to, or None; guards against reply loops."""
    if len(reply_to) > MAX_REPLY_KEY_LENGTH:
        return f"reply key longer than {MAX_REPLY_KEY_LENGTH} characters"
    if reply_to in served_queues or reply_to.startswith(queue_namespace(prefix)):
        return f"reply key {reply_to!r} names a request queue"
    if reply_to.startswith(f"{prefix}:") and not reply_to.startswith(reply_namespace(prefix)):
        return f"reply key {reply_to!r} is one of the library's own keys"
    return None


def reply_key_may_exist(reply_to: str, prefix: str = DEFAULT_PREFIX) -> bool:
    """Whether a reply may go onto a list that is already there: only under
    ``<prefix>:reply:``, where a key shared by many calls lives. Anywhere else a key
    that exists holds someone else's data, and a worker writes only to a key it creates
    (the reply script checks, in the same step as the write)."""
    return reply_to.startswith(reply_namespace(prefix))


def refused_reply_reason(reply_to: str, found: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The dead-letter reason of a reply the reply script would not write: ``found`` is
    the Redis type of the key it found there, and left exactly as it was."""
    if reply_key_may_exist(reply_to, prefix):
        return f"reply key {reply_to!r} holds a {found}, not a list"
    return (
        f"reply key {reply_to!r} holds a {found} and is not under {reply_namespace(prefix)!r}: "
        "outside it a worker writes only to keys that do not exist"
    )


def is_valid_id(value: Any) -> bool:
    """JSON-RPC ids are strings, numbers or null."""
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))


def request_problem(request: Any) -> str | None:
    """What makes one request object invalid under JSON-RPC 2.0, or None if it is valid.

    Checks exactly what the specification demands and nothing more (members it does
    not define are ignored), at a fraction of the cost of a JSON Schema.
    """
    if not isinstance(request, dict):
        return "a request must be a JSON object"
    if request.get("jsonrpc") != JSONRPC:
        return 'the member "jsonrpc" must be exactly "2.0"'
    if not isinstance(request.get("method"), str):
        return 'the member "method" must be a string'
    if "params" in request and not isinstance(request["params"], (list, dict)):
        return 'the member "params" must be an array or an object'
    if "id" in request and not is_valid_id(request["id"]):
        return 'the member "id" must be a string, a number or null'
    return None


def is_expired(deadline: float | None, now: float) -> bool:
    return deadline is not None and now >= deadline
