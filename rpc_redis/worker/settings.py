"""A worker's settings: each one, its default, its bound and its help, in one place.

``Worker(..., concurrency=4)`` and ``rpc-worker --concurrency 4`` are the same setting:
the command line's options are derived from :class:`WorkerSettings` (``cli.py``), and
one rule checks a value whichever way it came.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from .. import protocol

DEFAULT_CONCURRENCY = 8
DEFAULT_PREFETCH = 8
# A burst of events is read 64 at a time, as the floor reads it (bench/events_floor.py).
DEFAULT_EVENT_PREFETCH = 63
DEFAULT_DEAD_LETTER_LIMIT = 10_000
DEFAULT_MAX_DELIVERIES = 3
DEFAULT_HEARTBEAT_INTERVAL = 2.0
DEFAULT_EVENT_VISIBILITY = 30.0
# A request with no deadline of its own (bare, or a notification sent without one) runs
# at most this long: as long as an unread reply is kept.
DEFAULT_TIME_LIMIT = 60.0
# How long a stopping worker waits for its requests: under the 10 s Docker gives a
# container between SIGTERM and SIGKILL, with time left to write and to retire.
DEFAULT_DRAIN_TIMEOUT = 8.0
# How long one BLPOP blocks before the receive loop goes round again.
DEFAULT_BLOCK_SECONDS = 5.0


def setting(
    default: Any,
    help: str,
    *,
    minimum: int | None = None,
    seconds: bool = False,
    metavar: str | None = None,
    command_line: bool = True,
) -> Any:
    """A field of :class:`WorkerSettings` with what the command line needs to offer it.

    ``minimum``: the least integer allowed; ``seconds``: a positive number of seconds
    (or None where the default is None); ``command_line=False``: for tests and tuning,
    not offered by ``rpc-worker``.
    """
    metadata = {
        "help": help,
        "minimum": minimum,
        "seconds": seconds,
        "metavar": metavar,
        "command_line": command_line,
    }
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """Everything a worker can be told, with its default."""

    queue: str | None = setting(
        None,
        "serve this Redis list instead of the default queue key (one service only; "
        "default: <prefix>:queue:{<service>})",
        metavar="NAME",
    )
    prefix: str = setting(protocol.DEFAULT_PREFIX, "the prefix of every key the worker derives")
    concurrency: int = setting(
        DEFAULT_CONCURRENCY, "requests in flight at once, per process", minimum=1, metavar="N"
    )
    receive_in_threads: bool | None = setting(
        None,
        "serve from --concurrency threads, a Redis connection each (the fastest for plain "
        "functions), or with --no-receive-in-threads from the event loop on one connection "
        "(default: threads if a service has plain functions and no queue is reliable; see "
        "docs/worker.md)",
    )
    prefetch: int = setting(
        DEFAULT_PREFETCH,
        "in threads: requests waiting on the queue that each thread may take ahead, to serve "
        "a burst in fewer round trips; 0 takes none",
        minimum=0,
        metavar="K",
    )
    event_prefetch: int = setting(
        DEFAULT_EVENT_PREFETCH,
        "events (pub/sub and durable) each receiving thread may take ahead with one read, "
        "as many as its handlers' pace lets wait 5 ms at most; 0 takes none",
        minimum=0,
        metavar="K",
    )
    time_limit: float | None = setting(
        None,
        "seconds a handler may run before its caller gets error -32001 (for methods that "
        "set none of their own; a request's deadline bounds it too)",
        seconds=True,
        metavar="S",
    )
    default_time_limit: float | None = setting(
        DEFAULT_TIME_LIMIT,
        "the time limit of a request that carries no deadline (a bare request, a "
        "notification sent without one), for methods with no time limit; none: unbounded",
        seconds=True,
        metavar="S",
    )
    drain_timeout: float = setting(
        DEFAULT_DRAIN_TIMEOUT,
        "seconds a stopping worker waits for the requests in flight; then it exits, "
        "naming those it abandons (a reliable worker leaves them to be recovered)",
        seconds=True,
        metavar="S",
    )
    reply_ttl: float = setting(
        protocol.DEFAULT_REPLY_TTL, "seconds an unread reply is kept", seconds=True, metavar="S"
    )
    max_message_bytes: int = setting(
        protocol.DEFAULT_MAX_MESSAGE_BYTES,
        "larger requests get an error reply",
        minimum=1,
        metavar="N",
    )
    max_batch: int = setting(
        protocol.DEFAULT_MAX_BATCH,
        "a batch of more requests is rejected whole, before any of them runs",
        minimum=1,
        metavar="N",
    )
    max_reply_bytes: int = setting(
        protocol.DEFAULT_MAX_REPLY_BYTES,
        "a larger reply is replaced by error -32603 'Reply too large' (in a batch, its "
        "largest responses are, until the rest fits)",
        minimum=1024,
        metavar="N",
    )
    dead_letter_limit: int = setting(
        DEFAULT_DEAD_LETTER_LIMIT, "dead letters kept per service", minimum=1, metavar="N"
    )
    reliable: bool = setting(
        False,
        "recover requests from workers that die mid-call (at-least-once; see "
        "docs/reliability.md); services can also ask for it with Service(reliable=True)",
    )
    max_deliveries: int = setting(
        DEFAULT_MAX_DELIVERIES,
        "reliable mode: a request delivered this often is dead-lettered; durable events: "
        "one that failed this often, or was delivered once more without an acknowledgement",
        minimum=1,
        metavar="N",
    )
    event_visibility: float = setting(
        DEFAULT_EVENT_VISIBILITY,
        "durable events: seconds an event may stay unacknowledged, its worker silent, "
        "before another worker claims it; a failed event is retried after as long "
        "(see docs/events.md)",
        seconds=True,
        metavar="S",
    )
    heartbeat_interval: float = setting(
        DEFAULT_HEARTBEAT_INTERVAL,
        "seconds between heartbeats in the worker registry (and metrics samples); a worker "
        "silent for three is taken for dead",
        seconds=True,
        metavar="S",
    )
    metrics_port: int | None = setting(
        None,
        "serve Prometheus metrics at http://<metrics-host>:PORT/metrics, for all --processes "
        "at once (0: a free port; needs pip install 'rpc-redis[metrics]')",
        minimum=0,
        metavar="PORT",
    )
    metrics_host: str = setting("0.0.0.0", "the address --metrics-port listens on", metavar="HOST")
    debug: bool = setting(False, "include tracebacks in internal-error replies")
    block_seconds: float = setting(
        DEFAULT_BLOCK_SECONDS,
        "seconds one BLPOP blocks before the receive loop goes round again",
        seconds=True,
        command_line=False,
    )

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            problem = value_problem(item, getattr(self, item.name))
            if problem is not None:
                raise ValueError(f"{item.name} {problem}")

    @property
    def reply_ttl_ms(self) -> int:
        return int(self.reply_ttl * 1000)


def value_problem(item: dataclasses.Field[Any], value: Any) -> str | None:
    """Why ``value`` does not fit the setting, or None: the one check for both ways in."""
    if value is None:
        return None
    minimum = item.metadata.get("minimum")
    if minimum is not None:
        if not isinstance(value, int) or isinstance(value, bool):
            return "must be an integer"
        if value < minimum:
            return f"must be at least {minimum}"
    if item.metadata.get("seconds") and not (
        isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    ):
        return "must be a positive number of seconds"
    return None


def settings_fields() -> list[tuple[dataclasses.Field[Any], Any]]:
    """Each setting with its resolved type, in declaration order."""
    hints = typing.get_type_hints(WorkerSettings)
    return [(item, hints[item.name]) for item in dataclasses.fields(WorkerSettings)]
