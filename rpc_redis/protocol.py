"""The wire protocol, sans I/O: key names, envelopes, validation, replies, dead letters.

Nothing here touches a socket, a clock or a logger, so the sync client, the async
client and the worker all share one copy of the rules, and docs/protocol.md describes
exactly this module.
"""

from __future__ import annotations

import base64
import json
import traceback
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import jsonrpcclient
import orjson

from .errors import (
    INTERNAL_ERROR,
    InternalError,
    InvalidRequest,
    ParseError,
    RpcError,
    error_from_object,
)

ENVELOPE_VERSION = 1
DEFAULT_PREFIX = "rpc"
DEFAULT_REPLY_TTL = 60.0
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# A batch's requests and a reply's bytes: each bounds the work and the memory one
# message can cost, whatever it holds (go-ethereum's JSON-RPC server has a limit of
# 1,000 requests per batch too).
DEFAULT_MAX_BATCH = 1000
DEFAULT_MAX_REPLY_BYTES = 16 * 1024 * 1024
# A message's dead letter keeps only this much of one too large to be read (below).
DEAD_LETTER_HEAD_BYTES = 64 * 1024
MAX_REPLY_KEY_LENGTH = 1024
# The envelope's optional ``meta``: an object of strings, for middleware (trace context,
# tokens), bounded so that it cannot be made to cost more than the request it rides with.
MAX_META_MEMBERS = 32
MAX_META_KEY_LENGTH = 64
MAX_META_VALUE_LENGTH = 1024

JSONRPC = "2.0"


# -- keys ---------------------------------------------------------------------------
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


# -- JSON ---------------------------------------------------------------------------


def dumps(value: Any) -> bytes:
    """Serialise to compact UTF-8 JSON; stdlib fallback for integers wider than 64 bits
    (and for nesting deeper than orjson's 255 levels). Raises TypeError or ValueError
    for what cannot be serialised, a value nested past the recursion limit included."""
    try:
        return orjson.dumps(value)
    except TypeError:
        try:
            return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        except RecursionError:
            raise ValueError("nested too deeply to serialise") from None


def loads(data: bytes | str) -> Any:
    """Parse strict JSON (no NaN, no Infinity, valid UTF-8); raises ValueError."""
    return orjson.loads(data)


# -- building requests (client side) ------------------------------------------------


def params_from(args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Any] | dict[str, Any]:
    """JSON-RPC params from a Python call: positional ones or named ones, never both."""
    if args and kwargs:
        raise TypeError("JSON-RPC takes positional or keyword params, not both in one call")
    return dict(kwargs) if kwargs else list(args)


def request_object(method: str, params: list[Any] | dict[str, Any], id: Any) -> dict[str, Any]:
    """A request object; ``params`` is left out when empty, as the spec allows."""
    request: dict[str, Any] = jsonrpcclient.request(method, params=_client_params(params), id=id)
    return request


def notification_object(method: str, params: list[Any] | dict[str, Any]) -> dict[str, Any]:
    """A notification: a request with no id, to which no reply is ever written."""
    notification: dict[str, Any] = jsonrpcclient.notification(method, params=_client_params(params))
    if isinstance(notification.get("params"), tuple):
        notification["params"] = list(notification["params"])  # as request_object has it
    return notification


def _client_params(params: list[Any] | dict[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
    # jsonrpcclient takes positional params as a tuple and sends them as an array.
    return tuple(params) if isinstance(params, list) else params


def encode_envelope(
    request: Any,
    reply_to: str | None,
    deadline: float | None,
    meta: dict[str, str] | None = None,
    stream: dict[str, Any] | None = None,
) -> bytes:
    """The message a client pushes: the JSON-RPC request (or batch), where to reply, and
    the middleware's ``meta`` (left out when empty); ``stream`` asks for the results as a
    stream (``events/streams.py``)."""
    envelope: dict[str, Any] = {"v": ENVELOPE_VERSION}
    if reply_to is not None:
        envelope["reply_to"] = reply_to
    if deadline is not None:
        envelope["deadline"] = round(deadline, 6)
    if meta:
        envelope["meta"] = meta
    if stream is not None:
        envelope["stream"] = stream
    envelope["request"] = request
    return dumps(envelope)


def meta_problem(meta: Any) -> str | None:
    """Why an envelope's ``meta`` is unacceptable, or None: it must be an object of at
    most MAX_META_MEMBERS strings, keys non-empty and bounded, values bounded."""
    if not isinstance(meta, dict):
        return "envelope meta must be an object of strings"
    if len(meta) > MAX_META_MEMBERS:
        return f"envelope meta has more than {MAX_META_MEMBERS} members"
    for key, value in meta.items():
        if not isinstance(key, str) or not key or len(key) > MAX_META_KEY_LENGTH:
            return f"envelope meta keys must be 1 to {MAX_META_KEY_LENGTH} characters"
        if not isinstance(value, str):
            return "envelope meta values must be strings"
        if len(value) > MAX_META_VALUE_LENGTH:
            return f"envelope meta values must be at most {MAX_META_VALUE_LENGTH} characters"
    return None


# -- reading replies (client side) --------------------------------------------------


def decode_reply(raw: bytes | str) -> Any:
    """Parse a reply read from a reply key: a response object or a list of them."""
    try:
        return loads(raw)
    except ValueError as exc:
        raise InternalError("Reply is not valid JSON", data=str(exc)) from None


def reply_ids(reply: Any) -> list[Any]:
    """The ids a reply answers, so a client reading many calls off one key can route it."""
    items = reply if isinstance(reply, list) else [reply]
    return [item.get("id") for item in items if isinstance(item, dict)]


def result_of(response: Any) -> Any:
    """The result of one response object, or raise the :class:`RpcError` it carries."""
    if not isinstance(response, dict) or ("result" in response) == ("error" in response):
        raise InternalError("Malformed reply", data=response)
    if "error" in response:
        raise error_from_object(response["error"])
    try:
        parsed = jsonrpcclient.parse(response)
    except (KeyError, TypeError):
        raise InternalError("Malformed reply", data=response) from None
    return cast(jsonrpcclient.Ok, parsed).result


def outcomes_by_id(reply: Any) -> dict[Any, Any]:
    """Map each id in a (batch) reply to its result, or to the RpcError it carries."""
    if isinstance(reply, dict) and "error" in reply:
        # An object, not an array: the whole batch was rejected (too large, ...).
        raise error_from_object(reply["error"])
    outcomes: dict[Any, Any] = {}
    for response in reply if isinstance(reply, list) else [reply]:
        if not isinstance(response, dict):
            continue
        try:
            outcomes[response.get("id")] = result_of(response)
        except RpcError as exc:
            outcomes[response.get("id")] = exc
    return outcomes


# -- reading requests (worker side) -------------------------------------------------


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


# -- writing replies (worker side) ---------------------------------------------------


def error_response(request_id: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC, "error": error.to_error_object(), "id": request_id}


def exception_data(exc: BaseException, with_traceback: bool = False) -> dict[str, Any]:
    """The ``data`` of the error reply for an unexpected exception in a handler."""
    data: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if with_traceback:
        data["traceback"] = "".join(traceback.format_exception(exc))
    return data


def encode_response(response: Any) -> bytes:
    """Serialise a response or a batch of them.

    A result that cannot be serialised becomes an internal-error response for its own
    id, so one bad result neither loses the reply nor spoils the rest of a batch.
    """
    try:
        return dumps(response)
    except (TypeError, ValueError):
        if isinstance(response, list):
            return b"[" + b",".join(encode_response(item) for item in response) + b"]"
        return dumps(unserialisable_result_response(response))


def reply_within(response: Any, body: bytes, max_bytes: int) -> bytes:
    """A reply of at most ``max_bytes``, for a response whose encoding (``body``) is
    larger: a response over the limit becomes an error saying so, and in a batch the
    largest ones do, until the rest fits, so one huge result spoils nothing else."""
    if not isinstance(response, list):
        return dumps(reply_too_large_response(response, len(body), max_bytes))
    items = [encode_response(item) for item in response]
    total = sum(len(item) + 1 for item in items) + 1
    for index in sorted(range(len(items)), key=lambda n: len(items[n]), reverse=True):
        if total <= max_bytes:
            break
        replaced = dumps(reply_too_large_response(response[index], len(items[index]), max_bytes))
        total += len(replaced) - len(items[index])
        items[index] = replaced
    return b"[" + b",".join(items) + b"]"


def reply_too_large_response(response: Any, size: int, max_bytes: int) -> dict[str, Any]:
    request_id = response.get("id") if isinstance(response, dict) else None
    error = reply_too_large(size, max_bytes)
    return error_response(request_id if is_valid_id(request_id) else None, error)


def reply_too_large(size: int, max_bytes: int) -> RpcError:
    """The error for a reply (or a streamed item) of ``size`` bytes over the limit."""
    return RpcError("Reply too large", {"size": size, "limit": max_bytes}, code=INTERNAL_ERROR)


def unserialisable_result_response(response: Any) -> dict[str, Any]:
    """What replaces a response that cannot be serialised: an error keeps its code and
    message and loses the data that could not be written; a result becomes an internal
    error naming the result's type."""
    request_id = response.get("id") if isinstance(response, dict) else None
    request_id = request_id if is_valid_id(request_id) else None
    error = response.get("error") if isinstance(response, dict) else None
    if isinstance(error, dict):
        kept = {name: error[name] for name in ("code", "message") if name in error}
        return {"jsonrpc": JSONRPC, "error": kept, "id": request_id}
    result = response.get("result") if isinstance(response, dict) else response
    unserialisable = RpcError(
        "Result is not JSON serialisable",
        {"type": type(result).__name__},
        code=INTERNAL_ERROR,
    )
    return error_response(request_id, unserialisable)


def encode_dead_letter(
    raw: bytes, reason: str, queue: str, at: float, max_bytes: int | None = None
) -> bytes:
    """A dead-letter entry: the message exactly as received, why, where and when. One
    too large to be read under ``max_bytes`` (the worker's limit: see unread_above)
    keeps only its first DEAD_LETTER_HEAD_BYTES, in base64, so no requeue takes it."""
    entry: dict[str, Any] = {"reason": reason, "queue": queue, "time": round(at, 6)}
    if max_bytes is not None and len(raw) > unread_above(max_bytes):
        entry.update(size=len(raw), truncated=True)
        entry["message_base64"] = base64.b64encode(raw[:DEAD_LETTER_HEAD_BYTES]).decode("ascii")
        return dumps(entry)
    try:
        entry["message"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        entry["message_base64"] = base64.b64encode(raw).decode("ascii")
    return dumps(entry)


def decode_dead_letter(entry: bytes) -> dict[str, Any]:
    """A dead-letter entry as a dict, with ``raw`` holding the original message bytes."""
    decoded: dict[str, Any] = loads(entry)
    if "message_base64" in decoded:
        decoded["raw"] = base64.b64decode(decoded["message_base64"])
    else:
        decoded["raw"] = str(decoded.get("message", "")).encode("utf-8")
    return decoded


def summarize(values: Iterable[str], limit: int = 8) -> str:
    """A short, log-friendly list: 'a, b, c (+4 more)'."""
    items = list(values)
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} (+{len(items) - limit} more)"
