"""The demo behind ``make demo``: cats sent over Redis to a real rpc-worker process, a
litter of kittens streamed back, an SMS reply published to a bot, and an order whose
durable event two services handle.

Starts a private redis-server, runs ``rpc-worker services.cats services.sms
services.orders`` against it, calls, streams, publishes and emits, then stops the
worker (SIGTERM) and Redis, and prints what the worker logged.
"""

from __future__ import annotations

import os
import random
import sys

from rpc_redis import Client
from rpc_redis.embedded import EmbeddedRedis
from rpc_redis.testing import WorkerProcess

from .sms_web import publish_reply

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
SERVICES = ["services.cats", "services.sms", "services.orders"]


def main(cat_count: int = 5, litter: int = 3) -> int:
    with EmbeddedRedis() as redis_server:
        print(f"started redis-server (pid {redis_server.pid}) at {redis_server.url}")
        # services.orders emits with a Client of its own, made from $RPC_REDIS_URL.
        env = {**os.environ, "RPC_REDIS_URL": redis_server.url}
        worker = WorkerProcess([*SERVICES, "--redis-url", redis_server.url], env=env).start()
        try:
            print(f"started rpc-worker {' '.join(SERVICES)} (pid {worker.pid})")
            with Client(redis_server.url, timeout=5.0) as client:
                cats = client.proxy("cats")
                for name in random.sample(NAMES, cat_count):
                    age = random.randint(1, 20)
                    print(f"client sends cat {name}, {age}: {cats.receive(name, age)}")
                for kitten in cats.stream.kittens(litter):
                    number, name = f"{kitten['number']} of {kitten['of']}", kitten["name"]
                    print(f"client streams kitten {number}: {name}")
                received = publish_reply(client, "ann", "bob", "see you at 8")
                print(f"web app publishes a reply from ann to bob: {received} bot(s) got it")
                event_id = client.proxy("orders").place(1, "cat food", 3)
                print(f"client places order 1, emitted as event {event_id}")
            for _ in range(cat_count):
                worker.wait_for_line("server received cat")
            worker.wait_for_line("bot relays to bob")
            worker.wait_for_line("billing bills order 1")
            worker.wait_for_line("shipping ships 3 x cat food of order 1")
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
