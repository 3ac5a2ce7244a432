"""The wire rules of streamed results, sans I/O: how a caller asks for a stream, the
messages a worker pushes for it, and how a caller reads them.

A stream is a request whose envelope has a ``stream`` member. Its reply key receives
one message per item, ``{"id":…,"item":…}``, then one JSON-RPC response that ends it:
``{"jsonrpc":"2.0","result":{"items":N},"id":…}``, or an error response after the
items before the error. A caller needs nothing but BLPOP to read it. The worker keeps
at most ``window`` messages waiting in the reply key: a slow caller slows the
generator, and neither the list nor the worker's memory grows past the window.
docs/protocol.md §10 describes exactly this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import protocol
from ..errors import InternalError, InvalidRequest, RpcError

# Messages a caller lets wait in its reply key unless it asks for another window...
DEFAULT_WINDOW = 64
# ...and the most a worker lets wait, whatever it asks for.
MAX_WINDOW = 1024
# A caller cancels a stream by setting its reply key to this string (SET ... PX): the
# worker's next push finds a string where its list was, and closes the generator.
CANCELLED = b"cancelled"


def stream_member(window: int) -> dict[str, Any]:
    """The envelope's ``stream`` member that asks for a stream of at most ``window``
    messages waiting in the reply key."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"a stream's window must be a positive integer, not {window!r}")
    return {"window": window}


def window_of(member: Any) -> int | RpcError:
    """The window a stream request asks for (at most MAX_WINDOW), or the error that
    refuses it: ``stream`` must be an object whose ``window`` is a positive integer."""
    window = member.get("window", DEFAULT_WINDOW) if isinstance(member, dict) else None
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        return InvalidRequest(data='envelope stream must be {"window": <positive integer>}')
    return min(window, MAX_WINDOW)


def stream_problem(payload: Any) -> str | None:
    """Why a payload cannot be streamed, or None: a stream is one request with an id."""
    if not isinstance(payload, dict) or "id" not in payload:
        return "a stream is one request with an id, not a batch or a notification"
    return None


# -- the worker's messages --------------------------------------------------------------


def item_message(request_id: Any, item: Any) -> bytes | None:
    """One item of a stream; None if the item cannot be written as JSON."""
    try:
        return protocol.dumps({"id": request_id, "item": item})
    except (TypeError, ValueError):
        return None


def end_message(request_id: Any, items: int) -> bytes:
    """The response that ends a stream that ran to its end: how many items it sent."""
    response = {"jsonrpc": protocol.JSONRPC, "result": {"items": items}, "id": request_id}
    return protocol.dumps(response)


def error_message(request_id: Any, error: RpcError) -> bytes:
    """The response that ends a stream with an error, after the items before it."""
    return protocol.encode_response(protocol.error_response(request_id, error))


def unserialisable_item(item: Any) -> RpcError:
    return InternalError("Stream item is not JSON serialisable", {"type": type(item).__name__})


# -- the caller's reading ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    value: Any


@dataclass(frozen=True, slots=True)
class End:
    """The end of a stream: ``items`` sent in all, as the worker counted them."""

    items: int


def read_message(raw: bytes | str, request_id: Any) -> Item | End:
    """One message read from a stream's reply key: an item, or the end; raises the
    RpcError that ends a failed stream (or one for a message that is not the stream's)."""
    message = protocol.decode_reply(raw)
    if not isinstance(message, dict) or message.get("id") != request_id:
        raise InternalError("Reply does not belong to this stream", data=message)
    if "item" in message:
        return Item(message["item"])
    result = protocol.result_of(message)  # raises the error that ended the stream
    items = result.get("items") if isinstance(result, dict) else None
    if isinstance(items, bool) or not isinstance(items, int):
        raise InternalError("Malformed end of stream", data=message)
    return End(items)
