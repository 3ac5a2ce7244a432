"""What a message earns, and the Redis commands that deliver it.

The worker receives on its event loop or on its threads (see ``lanes.py``); both come
here to decide what a message gets (a reply, a dead letter, or nothing), to turn that
outcome into commands, and to judge what Redis said to them, so each decision exists
once. The middleware's per-message hooks (the worker's own counters among them) are
called from here, once per event.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from .. import protocol
from ..errors import INTERNAL_ERROR, TIME_LIMIT_EXCEEDED, InternalError, refusal_text
from ..middleware import Hooks, Middleware, run_hooks
from ..printable import printable, printable_exception
from . import scripts
from .bounds import PAST_DEADLINE
from .receiving import Command

logger = logging.getLogger("rpc_redis.worker")

PUSH_REPLY_SCRIPT = scripts.load("push_reply")


@dataclass
class WorkerStats(Middleware):
    """Counters a test, a health check or a metrics exporter can read: the worker's own
    middleware, first in its chain."""

    received: int = 0
    replied: int = 0
    notifications: int = 0
    expired: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    # Receiving in threads: requests taken ahead of a free thread, and given back to
    # their queue unstarted (see lanes.py). Many given back: a lower --prefetch.
    taken_ahead: int = 0
    given_back: int = 0

    def __post_init__(self) -> None:
        # Not fields: asdict() gives the counters alone.
        self._lock = threading.Lock()
        self._served: dict[str, int] = {}  # queue -> messages answered or served

    def add(self, counter: str, count: int = 1) -> None:
        """Count; safe from the worker's threads and its event loop alike."""
        with self._lock:
            setattr(self, counter, getattr(self, counter) + count)

    def served(self) -> dict[str, int]:
        """Messages served so far, per queue: replied to, or notifications (the registry's)."""
        with self._lock:
            return dict(self._served)

    def _serve(self, counter: str, queue: str) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)
            self._served[queue] = self._served.get(queue, 0) + 1

    def after_receive(self, queue: str) -> None:
        self.add("received")

    def after_skip(self, queue: str, reason: str) -> None:
        self.add("expired")

    def after_reject(self, queue: str, reason: str) -> None:
        self.add("rejected")

    def after_reply_written(self, queue: str) -> None:
        self._serve("replied", queue)

    def after_dead_letter(self, queue: str, reason: str) -> None:
        self.add("dead_lettered")

    def after_notification(self, queue: str) -> None:
        self._serve("notifications", queue)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What handling a message produced: a reply to write, a dead letter, or neither."""

    reply_to: str | None = None
    body: bytes | None = None
    dead_letter_reason: str | None = None
    deadline: float | None = None


class Handling:
    """A worker's rules for messages: its services, limits, reply expiry and hooks."""

    def __init__(
        self,
        services_by_queue: dict[str, str],
        hooks: Hooks,
        *,
        prefix: str,
        max_message_bytes: int,
        max_batch: int,
        max_reply_bytes: int,
        reply_ttl_ms: int,
        dead_letter_limit: int,
    ) -> None:
        self.services_by_queue = services_by_queue  # queue -> service name
        self.hooks = hooks
        self.prefix = prefix
        self.max_message_bytes = max_message_bytes
        self.max_batch = max_batch
        self.max_reply_bytes = max_reply_bytes
        self.reply_ttl_ms = reply_ttl_ms
        self.dead_letter_limit = dead_letter_limit

    def screen(self, queue: str, raw: bytes) -> protocol.Incoming | Outcome:
        """The message to dispatch, or the outcome it earns without being dispatched."""
        run_hooks(self.hooks.after_receive, queue)
        message = protocol.decode_message(raw, self.max_message_bytes, self.max_batch)
        if isinstance(message, protocol.Rejected):
            return self._rejection(queue, message)
        reply_to = message.reply_to
        if reply_to is not None:
            problem = protocol.reply_key_problem(reply_to, self.services_by_queue, self.prefix)
            if problem is not None:
                return Outcome(dead_letter_reason=problem)
        if protocol.is_expired(message.deadline, time.time()):
            run_hooks(self.hooks.after_skip, queue, "deadline passed")
            logger.debug(
                "skipped a request to %s whose caller stopped waiting",
                self.services_by_queue[queue],
            )
            return Outcome()
        if reply_to is None and protocol.expects_reply(message.payload):
            return Outcome(dead_letter_reason="request has no usable reply key")
        return message

    def answer(self, queue: str, message: protocol.Incoming, response: Any) -> Outcome:
        """The outcome of a dispatched message, given its response (None: nothing due;
        PAST_DEADLINE: its caller's deadline cut it short, so nobody waits for one)."""
        if response is PAST_DEADLINE:
            run_hooks(self.hooks.after_skip, queue, "deadline passed")
            return Outcome(deadline=message.deadline)
        if response is None:
            run_hooks(self.hooks.after_notification, queue)
            return Outcome(deadline=message.deadline)
        self._log_error_responses(queue, message.payload, response)
        body = protocol.encode_response(response)
        if len(body) > self.max_reply_bytes:
            logger.warning(
                "a reply to %s of %d bytes exceeds the limit of %d: replied with error -32603",
                self.services_by_queue[queue],
                len(body),
                self.max_reply_bytes,
            )
            body = protocol.reply_within(response, body, self.max_reply_bytes)
        return Outcome(message.reply_to, body, deadline=message.deadline)

    def describe(self, queue: str, raw: bytes) -> str:
        """A message, named for a log line: its service, method and id (for a batch,
        its size), read afresh from ``raw``, and printable."""
        service = self.services_by_queue[queue]
        try:
            message = protocol.decode_message(raw, self.max_message_bytes, self.max_batch)
        except Exception:
            message = None
        payload = message.payload if isinstance(message, protocol.Incoming) else None
        if isinstance(payload, list):
            return f"a batch of {len(payload)} to {service}"
        if not isinstance(payload, dict):
            return f"a message to {service}"
        method, request_id = payload.get("method"), payload.get("id")
        shown = f"{service}.{printable(method, 64)}"
        return shown if request_id is None else f"{shown} (id {printable(request_id, 64)})"

    def cut_short(self, queue: str, raw: bytes) -> None:
        """A call given up after its caller's deadline (on a receiving thread that is
        left to it): nothing is written, as for a request that expired in the queue."""
        logger.warning(
            "%s ran past its caller's deadline: its thread is left to finish it, "
            "unobserved, and another serves in its place",
            self.describe(queue, raw),
        )
        run_hooks(self.hooks.after_skip, queue, "deadline passed")

    def fault(self, queue: str, raw: bytes, error: Exception) -> Outcome:
        """The outcome of a message whose handling raised (a bug, in the worker or its
        middleware): one log line, and an internal-error reply if the message can be
        answered, else its dead letter. Read afresh from ``raw``: the fault may have
        come at any step."""
        logger.error(
            "unexpected error handling a message from %s: %s", queue, printable_exception(error)
        )
        try:
            message = protocol.decode_message(raw, self.max_message_bytes, self.max_batch)
        except Exception:  # the fault may be in reading it
            message = None
        reply_to = message.reply_to if message is not None else None
        if reply_to is None or protocol.reply_key_problem(
            reply_to, self.services_by_queue, self.prefix
        ):
            reason = f"the worker failed handling it: {type(error).__name__}: {printable(error)}"
            return Outcome(dead_letter_reason=reason)
        if isinstance(message, protocol.Incoming):
            if not protocol.expects_reply(message.payload):
                return Outcome()  # a notification: nobody to tell
            request_id = protocol.first_request_id(message.payload)
        else:
            request_id = message.request_id if message is not None else None
        data = {"type": type(error).__name__, "message": printable(error)}
        body = protocol.dumps(protocol.error_response(request_id, InternalError(data=data)))
        return Outcome(reply_to, body)

    def commands(
        self, queue: str, raw: bytes, outcome: Outcome, in_progress: str | None = None
    ) -> list[Command]:
        """The writes that deliver an outcome; for a reliable queue, also the removal of
        the request from the in-progress list (to run in one transaction with them)."""
        commands: list[Command] = []
        reply_to = outcome.reply_to
        if reply_to is not None and outcome.body is not None:
            may_exist = b"1" if protocol.reply_key_may_exist(reply_to, self.prefix) else b"0"
            commands.append(
                ("EVAL", PUSH_REPLY_SCRIPT, 1, reply_to, outcome.body, self.reply_ttl_ms, may_exist)
            )
        if outcome.dead_letter_reason is not None:
            key = protocol.dead_letter_key(self.services_by_queue[queue], self.prefix)
            entry = protocol.encode_dead_letter(
                raw, outcome.dead_letter_reason, queue, time.time(), self.max_message_bytes
            )
            commands.append(("RPUSH", key, entry))
            commands.append(("LTRIM", key, -self.dead_letter_limit, -1))
        if in_progress is not None:
            commands.append(("LREM", in_progress, 1, raw))
        return commands

    def written(self, queue: str, outcome: Outcome, results: list[Any]) -> Outcome | None:
        """Judge Redis's answers to an outcome's commands (error replies as values, in
        the order :meth:`commands` gave them), and tell the hooks. Returns what to write
        next, if anything: for a reply Redis or the reply script refused (a key of
        another type, one that exists outside the reply namespace, out of memory, no
        permission), the request's dead letter with that reason; for a dead letter
        refused in turn, nothing but the acknowledgement, so that a reliable request is
        given up once, never run again."""
        first = results[0] if results else None
        if outcome.reply_to is not None and outcome.body is not None:
            self._log_failure(queue, results[1:])
            if first in (b"ok", "ok"):
                run_hooks(self.hooks.after_reply_written, queue)
                return None
            if isinstance(first, Exception):
                return Outcome(dead_letter_reason=f"Redis refused the reply: {refusal_text(first)}")
            found = first.decode() if isinstance(first, bytes) else str(first)
            refused = protocol.refused_reply_reason(outcome.reply_to, found, self.prefix)
            return Outcome(dead_letter_reason=refused)
        reason = outcome.dead_letter_reason
        if reason is None:
            self._log_failure(queue, results)  # an acknowledgement alone
            return None
        service = self.services_by_queue[queue]
        if isinstance(first, Exception):
            logger.error(
                "gave up a message to %s: could not dead-letter it (%s): %s",
                service,
                printable(reason),
                printable(refusal_text(first)),
            )
            return Outcome()  # acknowledged, if reliable; nothing more can be done
        self._log_failure(queue, results[1:])
        logger.warning("dead-lettered a message to %s: %s", service, printable(reason))
        run_hooks(self.hooks.after_dead_letter, queue, reason)
        return None

    def _log_failure(self, queue: str, results: list[Any]) -> None:
        """One line for the first of the other commands Redis refused (LTRIM, LREM)."""
        failure = next((result for result in results if isinstance(result, Exception)), None)
        if failure is not None:
            logger.error(
                "could not write the outcome of a request to %s: %s",
                queue,
                printable(refusal_text(failure)),
            )

    def _rejection(self, queue: str, rejected: protocol.Rejected) -> Outcome:
        run_hooks(self.hooks.after_reject, queue, rejected.reason)
        reply_to = rejected.reply_to
        if reply_to is None or protocol.reply_key_problem(
            reply_to, self.services_by_queue, self.prefix
        ):
            return Outcome(dead_letter_reason=rejected.reason)
        logger.warning(
            "rejected a message to %s (%s); replied with error %d",
            self.services_by_queue[queue],
            printable(rejected.reason),
            rejected.error.code,
        )
        response = protocol.error_response(rejected.request_id, rejected.error)
        return Outcome(reply_to, protocol.encode_response(response))

    def _log_error_responses(self, queue: str, payload: Any, response: Any) -> None:
        """One line for the requests of a message the caller got wrong, however many
        (handler failures log their own): the first error, and how many more."""
        if isinstance(response, dict) and "error" not in response:
            return  # a result: the usual case, decided at once
        errors = [
            item
            for item in (response if isinstance(response, list) else [response])
            if isinstance(item, dict)
            and isinstance(item.get("error"), dict)
            and item["error"].get("code") not in (INTERNAL_ERROR, TIME_LIMIT_EXCEEDED)
        ]
        if not errors:
            return
        first = errors[0]
        method = next(
            (
                item.get("method")
                for item in (payload if isinstance(payload, list) else [payload])
                if isinstance(item, dict) and item.get("id") == first.get("id")
            ),
            "?",
        )
        error = first["error"]
        reserved = any(-32768 <= item["error"].get("code", 0) <= -32000 for item in errors)
        more = f" (+{len(errors) - 1} more in the batch)" if len(errors) > 1 else ""
        logger.log(
            logging.WARNING if reserved else logging.DEBUG,
            "%s.%s: error %s %s (%s)%s",
            self.services_by_queue[queue],
            printable(method),
            printable(error.get("code")),
            printable(error.get("message")),
            printable(error.get("data", "")),
            more,
        )
