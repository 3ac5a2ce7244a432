"""``rpc-worker``: import services, then serve them until SIGTERM or SIGINT.

Thin by design: the options are derived from :class:`~rpc_redis.worker.settings.WorkerSettings`,
and everything else is the library's (``Worker``, ``Supervisor``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import types
import typing
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .connection import check_url, default_url
from .errors import RpcConfigurationError
from .middleware import Middleware, load_middleware
from .service import Service, load_services
from .worker import Worker
from .worker.heap import return_large_blocks
from .worker.settings import WorkerSettings, settings_fields, value_problem
from .worker.supervisor import EXIT_CONFIGURATION, Supervisor, child_command

logger = logging.getLogger("rpc_redis.cli")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
EXIT_USAGE = 2  # argparse's own, and ours for every configuration mistake


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
    add_settings(parser)
    parser.add_argument(
        "--processes",
        type=int_at_least(1),
        default=1,
        metavar="P",
        help="worker processes to run under this one (default: %(default)s)",
    )
    parser.add_argument(
        "--middleware",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="middleware to run around every call: an instance, or a class made with no "
        "arguments; repeat for several, which run in the order given",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(default: %(default)s)",
    )
    parser.add_argument("--version", action="version", version=f"rpc-redis {package_version()}")
    return parser


def add_settings(parser: argparse.ArgumentParser) -> None:
    """One option per worker setting, with its default, bound and help."""
    for item, kind in settings_fields():
        if not item.metadata.get("command_line", True):
            continue
        flag = "--" + item.name.replace("_", "-")
        help_text = item.metadata["help"]
        if "default:" not in help_text:
            help_text += " (default: none)" if item.default is None else " (default: %(default)s)"
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=item.metadata["help"])
        elif _is_optional(kind, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(
                flag,
                type=_parser_of(item, kind),
                default=item.default,
                metavar=item.metadata.get("metavar"),
                help=help_text,
            )


def _is_optional(kind: Any, inner: type) -> bool:
    arguments = typing.get_args(kind)
    is_union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    return is_union and inner in arguments and type(None) in arguments


def _parser_of(item: Any, kind: Any) -> Callable[[str], Any]:
    """Text to the setting's type, checked by the same rule as ``WorkerSettings``."""
    base = next((t for t in (int, float, str) if kind is t or _is_optional(kind, t)), str)
    optional = base is not str and _is_optional(kind, base)

    def parse(text: str) -> Any:
        if optional and text.lower() == "none":
            return None  # a bound turned off by choice, e.g. --default-time-limit none
        value = base(text)  # argparse says "invalid int value" of a ValueError
        problem = value_problem(item, value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = base.__name__
    return parse


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value

    return parse


def settings_from(args: argparse.Namespace) -> WorkerSettings:
    names = {item.name for item, _ in settings_fields() if item.metadata.get("command_line", True)}
    return WorkerSettings(**{name: getattr(args, name) for name in names})


def main(argv: Sequence[str] | None = None) -> int:
    parser = worker_parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments)
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT, stream=sys.stderr)
    try:
        url = check_url(args.redis_url or default_url())
        services: list[Service] = []
        for target in args.targets:
            services.extend(load_services(target))
        middleware: list[Middleware] = [load_middleware(target) for target in args.middleware]
        worker = Worker(services, url, settings=settings_from(args), middleware=middleware)
    except (ImportError, LookupError, ValueError, RpcConfigurationError) as exc:
        parser.exit(EXIT_USAGE, f"rpc-worker: error: {exc}\n")
    if args.processes > 1:
        metrics_address = (
            None if args.metrics_port is None else (args.metrics_host, args.metrics_port)
        )
        supervisor = Supervisor(
            child_command(arguments), args.processes, redis_url=url, metrics_address=metrics_address
        )
        try:
            return supervisor.run()
        except RpcConfigurationError as exc:
            print(f"rpc-worker: error: {exc}", file=sys.stderr, flush=True)
            return EXIT_CONFIGURATION
    return_large_blocks()
    try:
        asyncio.run(serve(worker))
    except RpcConfigurationError as exc:
        print(f"rpc-worker: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_CONFIGURATION
    if worker.busy_handler_threads:
        # Handlers past their time limit: their callers have had an error reply, and
        # interpreter exit would otherwise wait for them to return.
        logger.warning(
            "leaving %d handler thread(s) still running past their time limit or deadline",
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
