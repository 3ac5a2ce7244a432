"""A calculator service: ``rpc-worker services.calculator``."""

from __future__ import annotations

import asyncio

from rpc_redis import InvalidParams, RpcError, Service

service = Service("calculator")

DIVISION_BY_ZERO = 1001
# Whatever its callers ask, a service bounds the work it takes on.
MAX_SLEEP_SECONDS = 60.0


@service.method
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


@service.method
def sub(a: float, b: float) -> float:
    """Subtract b from a."""
    return a - b


@service.method
def mul(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


@service.method(errors=[RpcError("Division by zero", code=DIVISION_BY_ZERO)])
def div(a: float, b: float) -> float:
    """Divide a by b; dividing by zero is an error reply with code 1001."""
    if b == 0:
        raise RpcError("Division by zero", {"dividend": a}, code=DIVISION_BY_ZERO)
    return a / b


@service.method
async def sleep(seconds: float) -> float:
    """Wait, then return the seconds waited: for trying timeouts and shutdown. At most
    MAX_SLEEP_SECONDS: more is error -32602."""
    if not isinstance(seconds, (int, float)) or not 0 <= seconds <= MAX_SLEEP_SECONDS:
        raise InvalidParams(f"seconds must be a number from 0 to {MAX_SLEEP_SECONDS:g}")
    await asyncio.sleep(seconds)
    return seconds
