"""The client's side: building requests and envelopes, reading replies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import jsonrpcclient

from ..errors import (
    InternalError,
    RpcError,
    error_from_object,
)
from .codec import dumps, loads
from .constants import (
    ENVELOPE_VERSION,
    MAX_META_KEY_LENGTH,
    MAX_META_MEMBERS,
    MAX_META_VALUE_LENGTH,
)


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
