"""The worker's side, writing: responses, replies within their bound, dead letters."""

from __future__ import annotations

import base64
import traceback
from collections.abc import Iterable
from typing import Any

from ..errors import (
    INTERNAL_ERROR,
    RpcError,
)
from .codec import dumps, loads
from .constants import DEAD_LETTER_HEAD_BYTES, JSONRPC
from .incoming import is_valid_id, unread_above


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
