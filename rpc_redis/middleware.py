"""Middleware: hooks around every call, in the clients and in the worker.

Subclass :class:`Middleware` and override the hooks you need; the others do nothing
and cost nothing (a chain calls only the hooks a class overrides). Hooks are plain
functions, run where the call runs (a worker's thread or its event loop, the caller's
thread or loop), so they must be quick. A hook that raises :class:`RpcError` in
``before_call`` or ``before_send`` refuses the call with that error; anything else a
hook raises is logged in one line and the call goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from .context import CallContext
from .errors import RpcError
from .importing import import_user_module
from .printable import printable

logger = logging.getLogger("rpc_redis.middleware")


class Middleware:
    """No-op hooks. Worker side: ``before_call``, ``after_call`` around every handler,
    and the per-message hooks counters and metrics use. Client side: ``before_send``,
    ``after_reply``, in both clients."""

    # -- in the worker, around each handler ------------------------------------------

    def before_call(self, call: CallContext) -> None:
        """Before the handler runs; raise RpcError to answer with it instead."""

    def after_call(self, call: CallContext, result: Any, error: RpcError | None) -> None:
        """After the handler: its result, or the error its caller gets."""

    # -- in the worker, for each message -----------------------------------------------

    def after_receive(self, queue: str) -> None:
        """A message was taken off ``queue``."""

    def after_skip(self, queue: str, reason: str) -> None:
        """A message was dropped, nothing written, because nobody waits for it: its
        deadline passed in the queue, or during its call, which was cut short."""

    def after_reject(self, queue: str, reason: str) -> None:
        """A message was refused whole before dispatch (malformed, too large...)."""

    def after_reply_written(self, queue: str) -> None:
        """A reply is in its reply key."""

    def after_notification(self, queue: str) -> None:
        """A notification (or a batch of only those) was served: nothing is written."""

    def after_dead_letter(self, queue: str, reason: str) -> None:
        """A message is in its service's dead-letter list."""

    # -- in the clients ----------------------------------------------------------------

    def before_send(self, call: CallContext) -> None:
        """Before the request goes out: add string keys to ``call.meta``, or raise
        RpcError to fail the call without sending it. In a batch, the calls share one
        ``meta`` (one envelope)."""

    def after_reply(self, call: CallContext, result: Any, error: BaseException | None) -> None:
        """Once the call's outcome is known: its result, or the exception its caller
        gets (an RpcError, RpcTimeout...). For a notification, once it is pushed."""


Hook = Callable[..., None]


class Hooks:
    """A chain of middleware, as the lists of the hooks each class overrides."""

    def __init__(self, middleware: Sequence[Middleware] = ()) -> None:
        for item in middleware:
            if not isinstance(item, Middleware):
                raise TypeError(f"middleware must be Middleware instances, not {item!r}")
        self.middleware = list(middleware)
        self.before_call = self._overriding("before_call")
        self.after_call = self._overriding("after_call")
        self.after_receive = self._overriding("after_receive")
        self.after_skip = self._overriding("after_skip")
        self.after_reject = self._overriding("after_reject")
        self.after_reply_written = self._overriding("after_reply_written")
        self.after_notification = self._overriding("after_notification")
        self.after_dead_letter = self._overriding("after_dead_letter")
        self.before_send = self._overriding("before_send")
        self.after_reply = self._overriding("after_reply")

    def _overriding(self, name: str) -> list[Hook]:
        base = getattr(Middleware, name)
        return [
            getattr(item, name) for item in self.middleware if getattr(type(item), name) is not base
        ]


def run_hooks(hooks: list[Hook], *args: Any, may_refuse: bool = False) -> None:
    """Run each hook, logging in one line whatever it raises, except an RpcError from a
    hook that ``may_refuse`` (``before_call``, ``before_send``), which passes through."""
    for hook in hooks:
        try:
            hook(*args)
        except Exception as exc:
            if may_refuse and isinstance(exc, RpcError):
                raise
            logger.error(
                "middleware %s raised %s: %s; the call goes on",
                getattr(hook, "__qualname__", hook),
                type(exc).__name__,
                printable(exc),
            )


def load_middleware(target: str) -> Middleware:
    """``MODULE:ATTR`` as a Middleware: ATTR an instance, or a class made with no arguments."""
    module_name, colon, attribute = target.partition(":")
    if not colon or not attribute:
        raise LookupError(f"middleware {target!r} must be MODULE:ATTR")
    found = getattr(import_user_module(module_name), attribute, None)
    if isinstance(found, type) and issubclass(found, Middleware):
        found = found()
    if not isinstance(found, Middleware):
        raise LookupError(f"{target} is not a Middleware (found {type(found).__name__})")
    return found
