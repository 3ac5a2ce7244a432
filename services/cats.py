"""Cats, after the Go "redisgob" demo: clients send cats, the worker logs each one; and
a litter of kittens, streamed one by one as each is born.

rpc-worker services.cats
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from rpc_redis import InvalidParams, Service

logger = logging.getLogger("services.cats")

service = Service("cats")

KITTEN_NAMES = ["Tiger", "Smokey", "Pumpkin", "Shadow", "Pepper", "Ginger", "Socks", "Mittens"]
LARGEST_LITTER = 10_000


@service.method
def receive(name: str, age: int) -> str:
    """Log a cat and acknowledge it."""
    if not isinstance(name, str) or not isinstance(age, int) or isinstance(age, bool):
        raise InvalidParams("a cat is a name (string) and an age (integer)")
    logger.info("server received cat %s which is %d years old", name, age)
    return f"ok: {name} received"


@service.method
def kittens(count: int) -> Iterator[dict[str, Any]]:
    """A litter of ``count`` kittens, each sent as it is born: call it as a stream,
    ``client.proxy("cats").stream.kittens(5)``."""
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= LARGEST_LITTER:
        raise InvalidParams(f"a litter is 0 to {LARGEST_LITTER} kittens")
    for number in range(1, count + 1):
        name = KITTEN_NAMES[(number - 1) % len(KITTEN_NAMES)]
        yield {"name": name, "number": number, "of": count}
    logger.info("a litter of %d kittens was born", count)
