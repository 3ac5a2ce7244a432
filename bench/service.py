"""The service the benchmark calls: ``rpc-worker bench.service``."""

from __future__ import annotations

from rpc_redis import Service

service = Service("bench")


@service.method
def echo(payload: str) -> str:
    return payload


@service.method
async def echo_async(payload: str) -> str:
    return payload
