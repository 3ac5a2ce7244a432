"""A calculator service: ``rpc-worker services.calculator``."""

from __future__ import annotations

import asyncio

from rpc_redis import RpcError, Service

service = Service("calculator")

DIVISION_BY_ZERO = 1001


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
    """Wait, then return the seconds waited: for trying timeouts and shutdown."""
    await asyncio.sleep(seconds)
    return seconds
