"""A service for concurrency tests, served by real rpc-worker processes."""

from __future__ import annotations

import asyncio
import os
import threading
import time

from rpc_redis import Service

service = Service("slow")


@service.method
def sync_sleep(seconds: float) -> str:
    time.sleep(seconds)
    return f"sync slept {seconds}"


@service.method
async def async_sleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return f"async slept {seconds}"


@service.method
def fast(value: int) -> int:
    return value


@service.method
def where() -> dict[str, object]:
    return {"pid": os.getpid(), "thread": threading.current_thread().name}


@service.method
async def where_async() -> dict[str, object]:
    return {"pid": os.getpid(), "thread": threading.current_thread().name}


@service.method(time_limit=0.3)
def stuck_sync() -> str:
    time.sleep(3)
    return "too late"


@service.method
async def stuck_async() -> str:
    await asyncio.sleep(30)
    return "too late"


_barriers: dict[str, threading.Barrier] = {}
_barriers_lock = threading.Lock()


def _barrier(name: str, parties: int, timeout: float) -> threading.Barrier:
    with _barriers_lock:
        return _barriers.setdefault(name, threading.Barrier(parties, timeout=timeout))


@service.method
def meet_sync(name: str, parties: int, timeout: float = 10) -> str:
    """Returns only once ``parties`` calls are inside meet_sync/meet_async at once."""
    _barrier(name, parties, timeout).wait()
    return "met"


@service.method
async def meet_async(name: str, parties: int, timeout: float = 10) -> str:
    await asyncio.to_thread(_barrier(name, parties, timeout).wait)
    return "met"


@service.method
def count_and_sleep(token: str, seconds: float) -> int:
    """Counts its executions of ``token`` in Redis (from $RPC_REDIS_URL), then sleeps."""
    import redis

    with redis.Redis.from_url(os.environ["RPC_REDIS_URL"]) as connection:
        executions = int(connection.incr(f"test:executions:{token}"))
    time.sleep(seconds)
    return executions


@service.method
def crash() -> None:
    """Kills the worker process outright, as a segfault or the OOM killer would."""
    os.kill(os.getpid(), 9)
