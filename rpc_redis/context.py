"""The call a handler serves, and the call a middleware hook looks at: one class for
both sides of the wire, so a hook written for the client reads like one for the worker."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class CallContext:
    """One call: what it asks for, of whom, until when, and the caller's ``meta``.

    In a client, ``meta`` is the envelope's ``meta`` being built (hooks add string keys
    in ``before_send``); in a worker it is what the envelope carried. ``request_id`` is
    None for a notification (``is_notification``).

    An event is served as a call too: ``event`` names its channel (pub/sub) or topic
    (durable), ``params`` holds its data, and ``delivery_count`` says how often a durable
    event has been delivered (1 the first time), so that a handler can be idempotent.
    In a client, ``publish`` and ``emit`` are calls of the method of that name to the
    channel or topic.
    """

    service: str
    method: str
    params: list[Any] | dict[str, Any] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    request_id: Any = None
    deadline: float | None = None
    is_notification: bool = False
    event: str | None = None
    delivery_count: int = 1
    # A durable event's stream entry id ("1767225600123-0"), None otherwise.
    event_id: str | None = None

    def remaining(self) -> float | None:
        """Seconds until the caller stops waiting, or None if it set no deadline."""
        return None if self.deadline is None else self.deadline - time.time()


# A frozen dataclass's __init__ stores each field through object.__setattr__, a Python
# call apiece; a receiver makes one CallContext per request or event, so it stores them
# straight into the slots instead, in under half the time (``received_call``).
_new = object.__new__
_STORE = {f.name: getattr(CallContext, f.name).__set__ for f in fields(CallContext)}
_service = _STORE["service"]
_method = _STORE["method"]
_params = _STORE["params"]
_meta = _STORE["meta"]
_request_id = _STORE["request_id"]
_deadline = _STORE["deadline"]
_is_notification = _STORE["is_notification"]
_event = _STORE["event"]
_delivery_count = _STORE["delivery_count"]
_event_id = _STORE["event_id"]


def received_call(
    service: str,
    method: str,
    params: list[Any] | dict[str, Any],
    meta: dict[str, str],
    request_id: Any,
    deadline: float | None,
    is_notification: bool,
    event: str | None = None,
    delivery_count: int = 1,
    event_id: str | None = None,
) -> CallContext:
    """``CallContext(...)`` with every field up to ``is_notification`` given, as a
    receiver builds one for each request or event: the same object, made quicker."""
    call = _new(CallContext)
    _service(call, service)
    _method(call, method)
    _params(call, params)
    _meta(call, meta)
    _request_id(call, request_id)
    _deadline(call, deadline)
    _is_notification(call, is_notification)
    _event(call, event)
    _delivery_count(call, delivery_count)
    _event_id(call, event_id)
    return call


_current_call: contextvars.ContextVar[CallContext] = contextvars.ContextVar("rpc_redis_call")


def current_call() -> CallContext | None:
    """The call being served by this handler, or None outside a handler."""
    return _current_call.get(None)


# Make a call the current one (its token to leave_call), and leave it: the ContextVar's
# own methods, called straight (a function around each costs a Python call per call).
enter_call: Callable[[CallContext], contextvars.Token[CallContext]] = _current_call.set
leave_call: Callable[[contextvars.Token[CallContext]], None] = _current_call.reset
