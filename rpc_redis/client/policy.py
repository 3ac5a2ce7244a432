"""The calling side's rules, written once beneath both clients, with no I/O.

Client and AsyncClient are different machines (a reply key per call against one per
client and a listener), but they place a call by the same rules: the defaults, what a
timeout may be, how long a call made inside a handler may wait, what the caller of a
failed exchange gets, and the middleware around each call. Both are thin I/O over this
module, as httpx's two clients are over h11's rules.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from .. import protocol
from ..connection import RedisTarget
from ..context import CallContext, current_call
from ..errors import (
    InternalError,
    RedisFailure,
    RpcError,
    RpcTimeout,
    classify_redis_error,
    redis_error,
)
from ..events import wire
from ..middleware import Hooks, Middleware, run_hooks

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 64


# -- timeouts and deadlines ------------------------------------------------------------


def resolve_timeout(timeout: float | None, default: float | None = None) -> float:
    """The seconds a call waits: ``timeout``, or ``default`` (its client's) when None.

    A client's own timeout has no default above it, so there None is refused: every call
    has a timeout, and None never means waiting for ever. Zero, a negative, NaN or
    infinity is refused at once (zero once silently meant the default).
    """
    if timeout is None:
        if default is None:
            raise ValueError(
                "timeout must be a positive number of seconds, not None: every call has a "
                "timeout (give the one a call may wait at most)"
            )
        return default
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    if not 0 < timeout < math.inf:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return timeout


def effective_timeout(timeout: float) -> float:
    """A call made inside a handler waits no longer than that handler's own caller."""
    if timeout <= 0:
        raise ValueError("a call's timeout must be a positive number of seconds")
    call = current_call()
    remaining = call.remaining() if call is not None else None
    return timeout if remaining is None else max(min(timeout, remaining), 0.001)


def blpop_timeout(seconds: float) -> str:
    """BLPOP's timeout argument: 0 would block forever, so never less than a millisecond."""
    return f"{max(seconds, 0.001):.3f}"


# -- names -------------------------------------------------------------------------------


def unique_hex() -> str:
    """32 random hex digits, unique across clients and (forked) processes. os.urandom
    costs a quarter of uuid4, and a sync call needs two: its id and its reply key."""
    return os.urandom(16).hex()


def new_request_id() -> str:
    """A request id unique across clients: the AsyncClient routes replies by it."""
    return unique_hex()


def new_client_name() -> str:
    """The name a client's connections show in CLIENT LIST: a token of its own, never
    its reply key's (whoever may list clients must not learn where replies go)."""
    return f"rpc-client-{unique_hex()}"


# -- what a client is set up with ----------------------------------------------------------


class CallSettings:
    """Where and how long, and the hooks: what both clients need to place a call,
    checked once, when the client is made."""

    def __init__(
        self,
        target: RedisTarget,
        prefix: str,
        timeout: float,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self.target = target
        self.where = target.where  # Redis, named in every message, without passwords
        self.prefix = prefix
        self.timeout = resolve_timeout(timeout)
        self.hooks = ClientHooks.of(middleware)

    def queue_for(self, service: str, queue: str | None) -> str:
        return queue or protocol.queue_key(service, self.prefix)

    def new_reply_key(self, queue: str | None = None) -> str:
        """A reply key for one call to ``queue``, in its hash slot; with no queue, one
        for a client's many calls."""
        if queue is None:
            return protocol.reply_key(unique_hex(), self.prefix)
        return protocol.call_reply_key(queue, unique_hex(), self.prefix)

    def waits_through_failover(self, error: BaseException) -> bool:
        """Whether the wait for a reply already pushed may go on after ``error``: when
        Redis is lost under Sentinel or Cluster, whose replica takes over; the push
        replicated there is served, and its reply written to the new primary."""
        return self.target.follows_failover and retrying_helps(error)

    def timeout_for(self, timeout: float | None) -> float:
        """A proxy's, a call's or a batch's timeout: None means the client's."""
        return resolve_timeout(timeout, self.timeout)

    def exchange_error(
        self,
        error: BaseException,
        service: str,
        method: str,
        timeout: float,
        queue: str | None = None,
    ) -> BaseException:
        """What the caller of a failed exchange with Redis gets: RpcTimeout if Redis did
        not answer in time, else the library's one mapping (``errors.redis_error``) of
        the failure, caused by it; an error that is not Redis's is returned as it is.
        ``queue`` names the request's queue; None stands for waiting for the reply."""
        failure = classify_redis_error(error)
        if failure is None:
            return error
        if failure is RedisFailure.TIMEOUT:
            timed_out = RpcTimeout(service, method, timeout)
            timed_out.__cause__ = error
            return timed_out
        doing = f"the call to {queue}" if queue is not None else "the wait for its reply"
        return redis_error(error, self.where, doing)


def retrying_helps(error: BaseException) -> bool:
    """Whether waiting for a reply may go on after this Redis failure: through an outage
    or a slow answer, yes; past a refusal or a configuration error, never."""
    return classify_redis_error(error) in (RedisFailure.OUTAGE, RedisFailure.TIMEOUT)


# -- replies -------------------------------------------------------------------------------


# What turns a message's reply into what its caller gets: ``answer`` for one call, a
# batch's ``resolve`` for a batch; given the payload sent and the reply.
Finish = Callable[[Any, Any], Any]


def answer(request: dict[str, Any], reply: Any) -> Any:
    """The result of a call from its reply, or raise the RpcError the reply carries."""
    if not isinstance(reply, dict) or reply.get("id") != request["id"]:
        raise InternalError("Reply does not answer this call", data=reply)
    return protocol.result_of(reply)


def batch_outcomes(reply: Any, request_ids: Sequence[Any]) -> list[Any]:
    """Each call's result, or the RpcError it gets, from a batch reply, in call order."""
    try:
        outcomes = protocol.outcomes_by_id(reply)
    except RpcError as whole_batch_error:  # e.g. the batch was too large
        return [whole_batch_error] * len(request_ids)
    return [
        outcomes[request_id]
        if request_id in outcomes
        else InternalError("Batch reply has no response for this call", request_id)
        for request_id in request_ids
    ]


# -- events ------------------------------------------------------------------------------------


def event_command(
    method: str, name: str, data: Any, meta: dict[str, str] | None, prefix: str, maxlen: int
) -> tuple[Any, ...]:
    """The one command of ``publish`` (PUBLISH) or ``emit`` (XADD with a trim)."""
    body = wire.encode_event(data, meta)
    if method == "publish":
        return wire.publish_command(name, body, prefix)
    return wire.emit_command(name, body, prefix, maxlen)


def event_outcome(response: Any) -> Any:
    """What ``publish`` returns (how many subscribers received it), or ``emit`` (the
    event's id in its stream); a refusal is raised, to be mapped as any failure is."""
    if isinstance(response, BaseException):
        raise response
    return response.decode() if isinstance(response, bytes) else response


# -- middleware ------------------------------------------------------------------------------


class Outgoing:
    """One message on its way, as its hooks see it: a call for each request in it, all
    sharing the one ``meta`` the envelope carries. Sent inside ``with outgoing:``, whose
    end runs ``after_reply`` with the ``outcome`` set in it, or with what it raised."""

    __slots__ = ("_hooks", "calls", "is_batch", "meta", "outcome")

    def __init__(
        self, hooks: ClientHooks, calls: list[CallContext], meta: dict[str, str], is_batch: bool
    ) -> None:
        self._hooks = hooks
        self.calls = calls
        self.meta = meta
        self.is_batch = is_batch
        self.outcome: Any = None  # what the caller gets: set once it is known

    def __enter__(self) -> Outgoing:
        return self

    def __exit__(self, exc_type: object, error: BaseException | None, traceback: object) -> None:
        self.finish(error)

    def finish(self, error: BaseException | None) -> None:
        """Run ``after_reply``: with the ``outcome``, or with the error (a cancellation
        too: what began in ``before_send``, a span, must end)."""
        if error is None:
            self._hooks.replied(self, self.outcome)
        else:  # a cancellation too: what began in before_send (a span...) must end
            self._hooks.failed(self, error)


class ClientHooks:
    """A client's middleware: ``before_send`` and ``after_reply`` around each call.

    A client with no client-side hook gets None instead, and its calls skip hook work
    entirely.
    """

    __slots__ = ("_after_reply", "_before_send")

    def __init__(self, hooks: Hooks) -> None:
        self._before_send = hooks.before_send
        self._after_reply = hooks.after_reply

    @classmethod
    def of(cls, middleware: Sequence[Middleware]) -> ClientHooks | None:
        hooks = Hooks(middleware)
        return cls(hooks) if hooks.before_send or hooks.after_reply else None

    def before_send(self, service: str, payload: Any, deadline: float) -> Outgoing:
        """Run ``before_send`` for each request in the payload; the message to send,
        with the meta they built.

        A hook's RpcError, or meta that no envelope may carry (a ValueError), fails the
        message before it is sent; its calls' ``after_reply`` hooks see that error.
        """
        meta: dict[str, str] = {}
        is_batch = isinstance(payload, list)
        calls = [
            CallContext(
                service,
                request["method"],
                request.get("params", []),
                meta,
                request.get("id"),
                deadline,
                "id" not in request,
            )
            for request in (payload if is_batch else [payload])
        ]
        return self._sending(Outgoing(self, calls, meta, is_batch))

    def before_event(self, method: str, name: str, data: Any) -> Outgoing:
        """``before_send`` for an event: a ``publish`` or ``emit`` call to its channel or
        topic (``call.event``), its data the one param."""
        meta: dict[str, str] = {}
        call = CallContext(name, method, [data], meta, is_notification=True, event=name)
        return self._sending(Outgoing(self, [call], meta, is_batch=False))

    def _sending(self, outgoing: Outgoing) -> Outgoing:
        try:
            for call in outgoing.calls:
                run_hooks(self._before_send, call, may_refuse=True)
            problem = protocol.meta_problem(outgoing.meta)
            if problem is not None:
                raise ValueError(f"middleware set an invalid meta: {problem}")
        except (RpcError, ValueError) as refusal:
            self.failed(outgoing, refusal)
            raise
        return outgoing

    def replied(self, outgoing: Outgoing, outcome: Any) -> None:
        """Run ``after_reply`` for each call with what its caller got: for one call its
        result (None for a notification, once pushed); for a batch, the results (or
        RpcErrors) of its calls that expect a reply, in order."""
        if not outgoing.is_batch:
            run_hooks(self._after_reply, outgoing.calls[0], outcome, None)
            return
        results = iter(outcome or ())  # a batch of notifications only: nothing
        for call in outgoing.calls:
            result = None if call.is_notification else next(results)
            if isinstance(result, RpcError):
                run_hooks(self._after_reply, call, None, result)
            else:
                run_hooks(self._after_reply, call, result, None)

    def failed(self, outgoing: Outgoing, error: BaseException) -> None:
        """Run ``after_reply`` for each call of a message that failed as a whole."""
        for call in outgoing.calls:
            run_hooks(self._after_reply, call, None, error)
