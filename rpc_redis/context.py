"""The call a handler serves, and the call a middleware hook looks at: one class for
both sides of the wire, so a hook written for the client reads like one for the worker."""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field
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


_current_call: contextvars.ContextVar[CallContext] = contextvars.ContextVar("rpc_redis_call")


def current_call() -> CallContext | None:
    """The call being served by this handler, or None outside a handler."""
    return _current_call.get(None)


def enter_call(call: CallContext) -> contextvars.Token[CallContext]:
    """Make ``call`` the current one; hand the token to :func:`leave_call`."""
    return _current_call.set(call)


def leave_call(token: contextvars.Token[CallContext]) -> None:
    _current_call.reset(token)
