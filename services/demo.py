"""The demo behind ``make demo``: cats sent over Redis to a real rpc-worker process.

Starts a private redis-server, runs ``rpc-worker services.cats`` against it, sends a
few cats with random names and ages, then stops the worker (SIGTERM) and Redis,
and prints what the worker logged.
"""

from __future__ import annotations

import random
import sys

from rpc_redis import Client
from rpc_redis.embedded import EmbeddedRedis
from rpc_redis.testing import WorkerProcess

NEXT_STEPS = """
What next, from this directory:
  source .venv/bin/activate                        # rpc-worker, rpc-admin, redis-cli
  python -m rpc_redis.embedded --port 6379 &       # a Redis of your own (or use any Redis)
  rpc-worker services.calculator &                 # serve services/calculator.py
  rpc-admin call calculator.add 1 2                # call it: prints 3
  rpc-admin status                                 # what runs, what waits
  rpc-admin describe calculator                    # its methods, from rpc.discover
Then README.md (calling from Python, testing your services) and docs/."""

NAMES = ["Tom", "Felix", "Garfield", "Luna", "Simba", "Nala", "Misty", "Oscar", "Cleo", "Milo"]


def main(cat_count: int = 5) -> int:
    with EmbeddedRedis() as redis_server:
        print(f"started redis-server (pid {redis_server.pid}) at {redis_server.url}")
        worker = WorkerProcess(["services.cats", "--redis-url", redis_server.url]).start()
        try:
            print(f"started rpc-worker services.cats (pid {worker.pid})")
            with Client(redis_server.url, timeout=5.0) as client:
                cats = client.proxy("cats")
                for name in random.sample(NAMES, cat_count):
                    age = random.randint(1, 20)
                    print(f"client sends cat {name}, {age}: {cats.receive(name, age)}")
            for _ in range(cat_count):
                worker.wait_for_line("server received cat")
        finally:
            exit_code = worker.stop()
        print(f"rpc-worker exited with {exit_code}; it logged:")
        for line in worker.lines:
            print(f"  | {line}")
    print("stopped redis-server")
    print(NEXT_STEPS)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
