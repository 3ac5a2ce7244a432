"""Middleware to copy: timing every call, and a token shared by callers and workers.

    rpc-worker services.calculator --middleware services.middleware:Timing
    RPC_SHARED_TOKEN=... rpc-worker services.calculator --middleware services.middleware:SharedToken

and, in the caller, ``Client(url, middleware=[SharedToken()])``.
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import os
import time
from typing import Any

from rpc_redis import CallContext, Middleware, RpcError

logger = logging.getLogger("services.middleware")

UNAUTHORIZED = 4001
_started: contextvars.ContextVar[float] = contextvars.ContextVar("started")


class Timing(Middleware):
    """Log how long each call took in the worker, and how it ended."""

    def before_call(self, call: CallContext) -> None:
        _started.set(time.perf_counter())  # after_call runs in the same context

    def after_call(self, call: CallContext, result: Any, error: RpcError | None) -> None:
        elapsed_ms = (time.perf_counter() - _started.get()) * 1000
        outcome = "ok" if error is None else f"error {error.code}"
        logger.info("%s.%s took %.1f ms: %s", call.service, call.method, elapsed_ms, outcome)


class SharedToken(Middleware):
    """Callers put a shared token in each call's meta; workers refuse calls without it.

    The token travels in the request, so anyone who can read the queue can read it: this
    keeps out callers that do not know it, and Redis ACLs keep out the rest.
    """

    def __init__(self, token: str | None = None) -> None:
        self.token = token if token is not None else os.environ["RPC_SHARED_TOKEN"]

    def before_send(self, call: CallContext) -> None:
        call.meta["token"] = self.token

    def before_call(self, call: CallContext) -> None:
        # Compared as bytes: compare_digest raises on non-ASCII text, and a hook that
        # raises anything but RpcError lets the call go on.
        offered = call.meta.get("token", "").encode()
        if not hmac.compare_digest(offered, self.token.encode()):
            raise RpcError("Unauthorized", code=UNAUTHORIZED)
