"""The services the benchmark calls: ``rpc-worker bench.service:service`` and
``rpc-worker bench.service:async_service``.

One service per kind of handler: a worker receives in threads for a service with
plain functions and on its event loop for one whose methods are all ``async def``;
``validated`` is the plain one with its params checked against its hints.
"""

from __future__ import annotations

from rpc_redis import Service

service = Service("bench")
async_service = Service("bench_async")
validated = Service("bench_validated", validate=True)


@service.method
def echo(payload: str) -> str:
    return payload


@async_service.method(name="echo")
async def echo_async(payload: str) -> str:
    return payload


@validated.method(name="echo")
def echo_validated(payload: str) -> str:
    return payload
