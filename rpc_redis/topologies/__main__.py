"""Run one topology in the foreground until interrupted, for development by hand.

$ python -m rpc_redis.topologies sentinel [--password PW] [--sentinel-password PW]
$ python -m rpc_redis.topologies cluster [--primaries 3] [--replicas 1]
$ python -m rpc_redis.topologies tls-proxy --target HOST:PORT --cert F --key F [--client-ca F]
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from . import tls_proxy
from .cluster import EmbeddedCluster
from .sentinel import SentinelSet


def _serve_until_stopped(topology: SentinelSet | EmbeddedCluster) -> None:
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    with topology:
        # Blocked only once the processes run, so that they still obey SIGTERM themselves.
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        name = type(topology).__name__
        print(f"{name} (pids {topology.pids}) at {topology.url}; Ctrl-C stops it")
        sys.stdout.flush()
        signal.sigwait(stop_signals)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["tls-proxy"]:
        return tls_proxy.main(arguments[1:])
    parser = argparse.ArgumentParser(
        prog="python -m rpc_redis.topologies",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("tls-proxy", help="a TLS endpoint in front of a Redis (see its --help)")
    sentinel = commands.add_parser("sentinel", help="a primary, a replica and three sentinels")
    sentinel.add_argument("--password")
    sentinel.add_argument("--sentinel-password")
    cluster = commands.add_parser("cluster", help="a Redis Cluster")
    cluster.add_argument("--primaries", type=int, default=3)
    cluster.add_argument("--replicas", type=int, default=0)
    cluster.add_argument("--password")
    args = parser.parse_args(arguments)
    if args.command == "sentinel":
        _serve_until_stopped(
            SentinelSet(password=args.password, sentinel_password=args.sentinel_password)
        )
    else:
        _serve_until_stopped(
            EmbeddedCluster(args.primaries, replicas=args.replicas, password=args.password)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
