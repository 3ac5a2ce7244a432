"""``rpc-worker``: import services, then serve them until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

from . import protocol
from .connection import default_url
from .service import Service, load_services
from .worker.lifecycle import (
    DEFAULT_CONCURRENCY,
    DEFAULT_DEAD_LETTER_LIMIT,
    DEFAULT_PREFETCH,
    Worker,
)
from .worker.reliable import DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_MAX_DELIVERIES
from .worker.supervisor import Supervisor, child_command

logger = logging.getLogger("rpc_redis.cli")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def package_version() -> str:
    try:
        return version("rpc-redis")
    except PackageNotFoundError:
        return "unknown"


def worker_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpc-worker",
        description="Serve the rpc_redis Services defined in Python modules.",
        epilog="Example: rpc-worker services.calculator --redis-url redis://localhost:6379/0",
    )
    parser.add_argument(
        "targets",
        nargs="+",
        metavar="MODULE[:ATTR]",
        help="module to import; every Service in it is served, or only the one named by ATTR",
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        help="Redis URL (default: $RPC_REDIS_URL, then $REDIS_URL, then redis://localhost:6379/0)",
    )
    parser.add_argument(
        "--queue", default=None, help="serve this Redis list instead of the default queue key"
    )
    parser.add_argument(
        "--prefix",
        default=protocol.DEFAULT_PREFIX,
        help="key prefix (default: %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=DEFAULT_CONCURRENCY,
        help="requests in flight at once (default: %(default)s)",
    )
    parser.add_argument(
        "--processes",
        type=positive_int,
        default=1,
        help="worker processes to run under this one (default: %(default)s)",
    )
    parser.add_argument(
        "--reply-ttl",
        type=positive_float,
        default=protocol.DEFAULT_REPLY_TTL,
        help="seconds an unread reply is kept (default: %(default)s)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=positive_int,
        default=protocol.DEFAULT_MAX_MESSAGE_BYTES,
        help="larger requests get an error reply (default: %(default)s)",
    )
    parser.add_argument(
        "--dead-letter-limit",
        type=positive_int,
        default=DEFAULT_DEAD_LETTER_LIMIT,
        help="dead letters kept per service (default: %(default)s)",
    )
    parser.add_argument(
        "--time-limit",
        type=positive_float,
        default=None,
        help="seconds a handler may run before its caller gets an error (default: none)",
    )
    parser.add_argument(
        "--reliable",
        action="store_true",
        help="recover requests from workers that die mid-call (at-least-once; see "
        "docs/reliability.md); services can also ask for it with Service(reliable=True)",
    )
    parser.add_argument(
        "--max-deliveries",
        type=positive_int,
        default=DEFAULT_MAX_DELIVERIES,
        help="reliable mode: a request delivered this often is dead-lettered "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=positive_float,
        default=DEFAULT_HEARTBEAT_INTERVAL,
        help="reliable mode: seconds between heartbeats; a worker silent for three is "
        "taken for dead (default: %(default)s)",
    )
    parser.add_argument(
        "--receive-in-threads",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve from --concurrency threads, a Redis connection each (the fastest for "
        "plain functions), or with --no-receive-in-threads from the event loop on one "
        "connection (default: threads if a service has plain functions and no queue is "
        "reliable; see docs/worker.md)",
    )
    parser.add_argument(
        "--prefetch",
        type=int_at_least(0),
        default=DEFAULT_PREFETCH,
        help="in threads: requests waiting on the queue that each thread may take ahead, "
        "to serve a burst in fewer round trips; 0 takes none (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(default: %(default)s)",
    )
    parser.add_argument(
        "--debug", action="store_true", help="include tracebacks in internal-error replies"
    )
    parser.add_argument("--version", action="version", version=f"rpc-redis {package_version()}")
    return parser


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value

    return parse


positive_int = int_at_least(1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = worker_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments)
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT, stream=sys.stderr)
    try:
        services: list[Service] = []
        for target in args.targets:
            services.extend(load_services(target))
        worker = Worker(
            services,
            args.redis_url or default_url(),
            queue=args.queue,
            prefix=args.prefix,
            concurrency=args.concurrency,
            reply_ttl=args.reply_ttl,
            max_message_bytes=args.max_message_bytes,
            dead_letter_limit=args.dead_letter_limit,
            debug=args.debug,
            time_limit=args.time_limit,
            reliable=args.reliable,
            max_deliveries=args.max_deliveries,
            heartbeat_interval=args.heartbeat_interval,
            receive_in_threads=args.receive_in_threads,
            prefetch=args.prefetch,
        )
    except (ImportError, LookupError, ValueError) as exc:
        parser.exit(2, f"rpc-worker: error: {exc}\n")
    if args.processes > 1:
        return Supervisor(child_command(arguments), args.processes).run()
    asyncio.run(serve(worker))
    if worker.busy_handler_threads:
        # Handlers past their time limit: their callers have had an error reply, and
        # interpreter exit would otherwise wait for them to return.
        logger.warning(
            "leaving %d handler thread(s) that ran past their time limit",
            worker.busy_handler_threads,
        )
        logging.shutdown()
        os._exit(0)
    return 0


async def serve(worker: Worker) -> None:
    """Run the worker: the first SIGTERM or SIGINT drains it, a second exits at once."""
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            logger.info("received %s; send it again to exit at once", signal.Signals(signum).name)
            worker.stop()
        else:
            logger.warning("received %s again; exiting now", signal.Signals(signum).name)
            logging.shutdown()
            os._exit(1)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await worker.run()
    logger.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
