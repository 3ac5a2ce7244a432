"""The floors of events and streams: the least any design of each shape can do, as bare
redis-py (hiredis) loops, no JSON, no envelope, no dispatch.

    python -m bench.events_floor pubsub   REDIS_URL CHANNEL ACK
    python -m bench.events_floor consumer REDIS_URL STREAM GROUP ACK
    python -m bench.events_floor streamer REDIS_URL QUEUE

- pubsub: SUBSCRIBE; for each message, RPUSH it to ACK (the caller BLPOPs ACK).
- consumer: XREADGROUP BLOCK, up to 64 entries at a time; for each, RPUSH its event to
  ACK (the handler's work: a handler's own I/O is one round trip per event, whatever
  runs it; ACK "-" does none); then XACK them all, in one command.
- streamer: BLPOP a request (a reply key, a count, a payload); RPUSH the payload to the
  reply key that many times, one RPUSH each (the caller BLPOPs each item).
"""

from __future__ import annotations

import signal
import sys

import redis


def stopped_by_sigterm() -> list[bool]:
    running = [True]

    def stop(*_: object) -> None:
        running[0] = False

    signal.signal(signal.SIGTERM, stop)
    return running


def pubsub(url: str, channel: str, ack: str) -> None:
    connection = redis.Redis.from_url(url, socket_timeout=None, protocol=2)
    subscriber = connection.pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe(channel)
    running = stopped_by_sigterm()
    print("floor ready", flush=True)
    while running[0]:
        message = subscriber.get_message(timeout=1.0)
        if message is not None:
            connection.rpush(ack, message["data"])


def consumer(url: str, stream: str, group: str, ack: str) -> None:
    connection = redis.Redis.from_url(url, socket_timeout=None)
    try:
        connection.xgroup_create(stream, group, "0", mkstream=True)
    except redis.ResponseError:
        pass  # BUSYGROUP: made by an earlier run
    running = stopped_by_sigterm()
    print("floor ready", flush=True)
    while running[0]:
        answer = connection.xreadgroup(group, "floor", {stream: ">"}, count=64, block=1000)
        for _, entries in answer or []:
            if ack != "-":  # "-": no handler's work, reading and acknowledging alone
                for _, fields in entries:
                    connection.rpush(ack, fields[b"event"])
            connection.xack(stream, group, *(entry_id for entry_id, _ in entries))


def streamer(url: str, queue: str) -> None:
    connection = redis.Redis.from_url(url, socket_timeout=None)
    running = stopped_by_sigterm()
    print("floor ready", flush=True)
    while running[0]:
        popped = connection.blpop([queue], 1)
        if popped is None:
            continue
        reply_key, count, payload = popped[1].split(b" ", 2)
        for _ in range(int(count)):
            connection.rpush(reply_key, payload)
        connection.expire(reply_key, 60)


if __name__ == "__main__":
    kind, *arguments = sys.argv[1:]
    {"pubsub": pubsub, "consumer": consumer, "streamer": streamer}[kind](*arguments)
