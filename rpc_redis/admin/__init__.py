"""``rpc-admin``, and the operations behind it, usable from Python as well.

- ``status.py``: the registered workers and each service's queue (``status``, ``workers``);
- ``calls.py``: calls through a Client (``call``, ``ping``, ``describe``);
- ``dead.py``: a service's dead letters (``dead count|list|requeue|purge``);
- ``cli.py``: the command line; ``outcome.py``: its exit statuses.
"""

from .calls import Pong, Target, describe, params_of, ping
from .cli import admin_parser, connect, main
from .dead import (
    MESSAGE_WIDTH,
    REASON_WIDTH,
    UNREADABLE_REASON,
    DeadLetter,
    RequeueResult,
    count_dead_letters,
    format_json,
    format_line,
    list_dead_letters,
    purge_dead_letters,
    requeue_dead_letters,
)
from .outcome import (
    EXIT_FAILED,
    EXIT_FLAGGED,
    EXIT_OK,
    EXIT_REDIS_ERROR,
    EXIT_TIMEOUT,
    EXIT_USAGE,
)
from .status import ServiceStatus, WorkerInfo, list_workers, service_status

__all__ = [
    "EXIT_FAILED",
    "EXIT_FLAGGED",
    "EXIT_OK",
    "EXIT_REDIS_ERROR",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "MESSAGE_WIDTH",
    "REASON_WIDTH",
    "UNREADABLE_REASON",
    "DeadLetter",
    "Pong",
    "RequeueResult",
    "ServiceStatus",
    "Target",
    "WorkerInfo",
    "admin_parser",
    "connect",
    "count_dead_letters",
    "describe",
    "format_json",
    "format_line",
    "list_dead_letters",
    "list_workers",
    "main",
    "params_of",
    "ping",
    "purge_dead_letters",
    "requeue_dead_letters",
    "service_status",
]
