"""The floor: the least any design of this shape can do, as a bare worker loop.

    python -m bench.floor REDIS_URL QUEUE

BLPOP a message (the reply key, a space, the payload), then LPUSH the payload to the
reply key and EXPIRE it in one pipeline, with redis-py and hiredis. A client does
LPUSH then BLPOP. No JSON, no dispatch, no envelope.
"""

from __future__ import annotations

import signal
import sys

import redis


def serve(url: str, queue: str) -> None:
    connection = redis.Redis.from_url(url, socket_timeout=None)
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    print("floor worker ready", flush=True)
    while running:
        popped = connection.blpop([queue], 1)
        if popped is None:
            continue
        reply_key, _, payload = popped[1].partition(b" ")
        pipe = connection.pipeline(transaction=False)
        pipe.lpush(reply_key, payload)
        pipe.expire(reply_key, 60)
        pipe.execute()


def call(connection: redis.Redis, queue: str, reply_key: bytes, payload: bytes) -> bytes:
    """The floor's client side: one LPUSH, one BLPOP."""
    connection.lpush(queue, reply_key + b" " + payload)
    popped = connection.blpop([reply_key], 10)
    assert popped is not None, "the floor worker did not answer"
    return popped[1]  # type: ignore[no-any-return]


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
