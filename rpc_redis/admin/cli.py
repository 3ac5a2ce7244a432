"""``rpc-admin``: one command, with subcommands, over the library's admin functions.

Thin by design: each subcommand parses its options, calls a function of ``dead.py``,
``status.py`` or ``calls.py`` (all usable from Python), and prints what it returns:
for people, or with ``--json`` for machines. The exit statuses are ``outcome.py``'s.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from .. import protocol
from ..client import Client
from ..connection import check_url, default_url, redact_url, resolve
from ..discovery import summary_lines
from ..errors import RpcConfigurationError, RpcConnectionError, RpcError, RpcRedisError, RpcTimeout
from ..middleware import load_middleware
from . import calls, status
from .dead import RedisClient, add_dead_commands, service_name
from .outcome import (
    EXIT_FAILED,
    EXIT_FLAGGED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    UsageError,
    fail,
    fail_on_redis,
    one_line,
)

# Seconds to wait for any one reply from Redis; requeueing 10,000 entries takes far less.
SOCKET_TIMEOUT = 60.0
DEFAULT_CALL_TIMEOUT = 10.0

Action = Callable[[RedisClient, argparse.Namespace], int]
ClientAction = Callable[[Client, argparse.Namespace], int]

EPILOG = """\
exit status: 0 done; 1 a remote error, or Redis failed or is unreachable; 2 a usage or
configuration mistake; 3 status found requests waiting with no live worker; 124 no reply
in time. Examples:
  rpc-admin status
  rpc-admin call calculator.add 1 2
  rpc-admin dead list calculator --limit 20
"""


def positive_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def admin_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpc-admin",
        description="Look after rpc_redis services: what runs, calls, dead letters.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--redis-url",
        metavar="URL",
        default=None,
        help="Redis URL (default: $RPC_REDIS_URL, then $REDIS_URL, then redis://localhost:6379/0)",
    )
    common.add_argument(
        "--prefix",
        metavar="P",
        default=protocol.DEFAULT_PREFIX,
        help="key prefix (default: %(default)s)",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON, for machines")
    calling = argparse.ArgumentParser(add_help=False, parents=[common, as_json])
    calling.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_CALL_TIMEOUT,
        metavar="S",
        help="seconds to wait for the reply (default: %(default)s); none: exit 124",
    )
    calling.add_argument(
        "--middleware",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="client middleware to call with (a token the workers ask for...), repeatable",
    )

    status_command = groups.add_parser(
        "status",
        parents=[common, as_json],
        help="every service: its workers, queue, calls in flight, dead letters, call rate",
        description="Every service a worker serves or requests wait for; exit 3 if requests "
        "wait in a queue that no live worker serves.",
    )
    status_command.add_argument(
        "services", nargs="*", metavar="SERVICE", help="also look at these services' queues"
    )
    status_command.set_defaults(action_function=run_status)

    workers = groups.add_parser(
        "workers", parents=[common, as_json], help="every registered worker, live or lost"
    )
    workers.set_defaults(action_function=run_workers)

    call = groups.add_parser(
        "call",
        parents=[calling],
        help="call a method and print its result as JSON",
        description="Call SERVICE.METHOD with params given as JSON values. Prints the result "
        "as JSON; a remote error prints the error object and exits 1; no reply in time "
        "exits 124.",
        epilog="Examples: rpc-admin call calculator.add 1 2; rpc-admin call calculator.add "
        "--kw a=1 --kw b=2; rpc-admin call cats.receive '\"Tom\"' 3",
    )
    call.add_argument("target", metavar="SERVICE.METHOD", help="e.g. calculator.add")
    call.add_argument(
        "arguments", nargs="*", metavar="ARG", help="positional params, each a JSON value"
    )
    call.add_argument(
        "--kw", action="append", default=[], metavar="NAME=VALUE", help="a named param (JSON)"
    )
    call.add_argument("--params", metavar="JSON", help="all the params: a JSON array or object")
    call.set_defaults(client_function=run_call)

    ping = groups.add_parser(
        "ping", parents=[calling], help="a round trip through a live worker, with its latency"
    )
    ping.add_argument("service", type=service_name, metavar="SERVICE")
    ping.add_argument("--count", type=int, default=1, metavar="N", help="pings (default: 1)")
    ping.set_defaults(client_function=run_ping)

    describe = groups.add_parser(
        "describe",
        parents=[calling],
        help="a service's methods, from its OpenRPC document (rpc.discover)",
    )
    describe.add_argument("service", type=service_name, metavar="SERVICE")
    describe.set_defaults(client_function=run_describe)

    add_dead_commands(groups, common)
    return parser


# -- what runs ------------------------------------------------------------------------


def run_workers(connection: redis.Redis, args: argparse.Namespace) -> int:
    workers = status.list_workers(connection, args.prefix)
    if args.json:
        print(protocol.dumps([worker.to_json() for worker in workers]).decode())
        return EXIT_OK
    if not workers:
        print(f"no worker is registered in {protocol.worker_registry_key(args.prefix)}")
    for worker in workers:
        print(worker_line(worker))
    return EXIT_OK


def worker_line(worker: status.WorkerInfo) -> str:
    state = "alive" if worker.alive else "LOST (no heartbeat)"
    services = ", ".join(sorted(set(worker.queues.values()))) or "-"
    return (
        f"{worker.id}  {state}  pid {worker.pid} on {worker.host}  serving {services}  "
        f"concurrency {worker.concurrency}  in flight {worker.in_flight}  "
        f"served {sum(worker.served.values())}  started {status.ago(worker.started)}  "
        f"seen {status.ago(worker.seen)}"
    )


def run_status(connection: redis.Redis, args: argparse.Namespace) -> int:
    services = status.service_status(connection, args.prefix, args.services)
    flagged = [service for service in services if service.flagged]
    if args.json:
        report = {"services": [service.to_json() for service in services], "flagged": len(flagged)}
        print(protocol.dumps(report).decode())
    else:
        print_status(services)
    return EXIT_FLAGGED if flagged else EXIT_OK


def print_status(services: list[status.ServiceStatus]) -> None:
    if not services:
        print("no service is served, and no request waits")
        return
    header = ("SERVICE", "QUEUE", "WAITING", "IN FLIGHT", "DEAD", "CALLS/S", "WORKERS")
    rows = [
        (
            service.service,
            service.queue,
            str(service.waiting),
            str(service.in_flight),
            str(service.dead_letters),
            f"{service.rate:.1f}",
            str(len(service.workers)),
        )
        for service in services
    ]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    for service, row in zip([None, *services], [header, *rows], strict=True):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())
        if service is None:
            continue
        for worker in service.workers:
            print(f"    worker {worker.id} (pid {worker.pid} on {worker.host})")
        for worker in service.lost:
            print(f"    worker {worker.id} (pid {worker.pid} on {worker.host}) LOST: no heartbeat")
        if service.flagged:
            print(f"    ! {service.waiting} request(s) waiting and no live worker")


# -- calls ------------------------------------------------------------------------------


def run_call(client: Client, args: argparse.Namespace) -> int:
    target = calls.Target.parse(args.target)
    params = calls.params_of(args.arguments, args.kw, args.params)
    try:
        result = calls.call(client, target, params, args.timeout)
    except RpcError as error:
        shown = {"error": error.to_error_object()} if args.json else error.to_error_object()
        print(protocol.dumps(shown).decode())
        return EXIT_FAILED
    print(protocol.dumps({"result": result} if args.json else result).decode())
    return EXIT_OK


def run_ping(client: Client, args: argparse.Namespace) -> int:
    if args.count < 1:
        raise UsageError("--count must be at least 1")
    for _ in range(args.count):
        pong = calls.ping(client, args.service, args.timeout)
        print(protocol.dumps(pong.to_json()).decode() if args.json else pong.line())
    return EXIT_OK


def run_describe(client: Client, args: argparse.Namespace) -> int:
    document = calls.describe(client, args.service, args.timeout)
    if args.json:
        print(protocol.dumps(document).decode())
    else:
        print("\n".join(summary_lines(document)))
    return EXIT_OK


# -- running ------------------------------------------------------------------------------


def connect(url: str) -> RedisClient:
    """One connection that fails fast and never resends a command (a requeue runs once);
    on a cluster, redis-py's RedisCluster, which follows its redirections."""
    target = resolve(url)
    if target.is_cluster:
        return target.cluster_client(socket_timeout=SOCKET_TIMEOUT)
    pool = target.sync_pool(
        max_connections=1, socket_timeout=SOCKET_TIMEOUT, retry=Retry(NoBackoff(), 0)
    )
    return redis.Redis.from_pool(pool)  # closing the client closes the pool


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rpc-admin``; the exit status is one of ``outcome.py``'s."""
    parser = admin_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # argparse has printed the usage or the help
        return exit_request.code if isinstance(exit_request.code, int) else EXIT_USAGE
    url = args.redis_url or default_url()
    if hasattr(args, "client_function"):
        return run_client_action(args.client_function, url, args)
    action: Action = args.action_function
    try:
        connection = connect(check_url(url))
    except RpcConfigurationError as exc:  # redis-py cannot use the URL
        return fail(EXIT_USAGE, one_line(exc))
    try:
        with connection:
            return action(connection, args)
    except UsageError as exc:
        return fail(EXIT_USAGE, str(exc))
    except (redis.exceptions.RedisError, OSError) as exc:
        return fail_on_redis(exc, redact_url(url))


def run_client_action(action: ClientAction, url: str, args: argparse.Namespace) -> int:
    """A subcommand that calls through a Client: its failures, each one line."""
    try:
        middleware = [load_middleware(target) for target in args.middleware]
        client = calls.make_client(url, args.prefix, args.timeout, middleware)
    except (ImportError, LookupError, ValueError, RpcConfigurationError) as exc:
        return fail(EXIT_USAGE, one_line(exc))
    try:
        with client:
            return action(client, args)
    except UsageError as exc:
        return fail(EXIT_USAGE, str(exc))
    except RpcTimeout as exc:
        return fail(EXIT_TIMEOUT, f"{exc} (is a worker serving it? rpc-admin status)")
    except RpcConfigurationError as exc:
        return fail(EXIT_USAGE, one_line(exc))
    except RpcError as exc:  # ping, describe: the remote error, on one line
        return fail(EXIT_FAILED, one_line(exc))
    except (RpcConnectionError, RpcRedisError) as exc:
        return fail(EXIT_FAILED, one_line(exc))
