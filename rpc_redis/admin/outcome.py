"""How an ``rpc-admin`` command ends: its exit status, and one line on stderr if it failed.

A script can rely on the status (docs/observability.md, "Exit codes"): 0 done; 1 the
remote method answered with an error, or Redis failed or is unreachable; 2 a usage or
configuration mistake; 3 ``status`` found a queue with requests and no live worker;
124 no reply in time (as ``timeout(1)`` exits).
"""

from __future__ import annotations

import sys

from ..errors import RedisFailure, classify_redis_error, describe_redis_error, redis_error

EXIT_OK = 0
EXIT_FAILED = 1  # a remote error, or Redis failed or is unreachable
EXIT_REDIS_ERROR = EXIT_FAILED
EXIT_USAGE = 2
EXIT_FLAGGED = 3  # status: requests waiting and no live worker for them
EXIT_TIMEOUT = 124


class UsageError(Exception):
    """A command that cannot run as given: exit status 2."""


def one_line(error: BaseException) -> str:
    """An error's text on one line, so that stderr gets exactly one line per failure."""
    return " ".join(str(error).split()) or type(error).__name__


def fail(status: int, message: str) -> int:
    """Report on stderr in argparse's style, and return the exit status."""
    print(f"rpc-admin: error: {message}", file=sys.stderr)
    return status


def fail_on_redis(error: BaseException, shown_url: str) -> int:
    """One line for a Redis failure: exit 2 for a configuration error (credentials, ACL,
    a missing database: fix the command), 1 for Redis unreachable or refusing."""
    failure = classify_redis_error(error)
    if failure is RedisFailure.CONFIGURATION:
        return fail(EXIT_USAGE, one_line(redis_error(error, shown_url, "rpc-admin")))
    said = " ".join(describe_redis_error(error).split())
    if failure is RedisFailure.REFUSED:
        return fail(EXIT_REDIS_ERROR, f"Redis at {shown_url} said: {said}")
    return fail(EXIT_REDIS_ERROR, f"cannot reach Redis at {shown_url}: {said}")
