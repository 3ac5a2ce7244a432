"""Cats, after the Go "redisgob" demo: clients send cats, the worker logs each one.

rpc-worker services.cats
"""

from __future__ import annotations

import logging

from rpc_redis import InvalidParams, Service

logger = logging.getLogger("services.cats")

service = Service("cats")


@service.method
def receive(name: str, age: int) -> str:
    """Log a cat and acknowledge it."""
    if not isinstance(name, str) or not isinstance(age, int) or isinstance(age, bool):
        raise InvalidParams("a cat is a name (string) and an age (integer)")
    logger.info("server received cat %s which is %d years old", name, age)
    return f"ok: {name} received"
