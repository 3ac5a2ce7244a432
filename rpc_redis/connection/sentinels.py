"""The sentinels' client, for both flavours, with a discovery that keeps every sentinel.

redis-py's ``discover_master`` moves the sentinel that answered to the head of its list
by an index read before the await: two discoveries at once (a pool's connections
reconnecting together after a failover) can both write the same sentinel in, so that
another is dropped from the list, and with it its connected connections, unclosed.
Here the answering sentinel is found where it is now and swapped in without an await
between, under a lock for threads.
"""

from __future__ import annotations

import threading
from typing import Any

import redis.asyncio.sentinel
import redis.sentinel
from redis.exceptions import ConnectionError, TimeoutError


class _Promotion:
    """Moves a sentinel that answered to the head of the list, the list kept whole."""

    sentinels: list[Any]

    def _init_promotion(self) -> None:
        self._promotion_lock = threading.Lock()

    def _promote(self, sentinel: Any) -> None:
        with self._promotion_lock:
            at = next((i for i, s in enumerate(self.sentinels) if s is sentinel), None)
            if at:
                self.sentinels[0], self.sentinels[at] = self.sentinels[at], self.sentinels[0]

    not_found: type[Exception]

    def _no_master(self, service_name: str, errors: list[str]) -> Exception:
        info = f" : {', '.join(errors)}" if errors else ""
        return self.not_found(f"No master found for {service_name!r}{info}")

    def _found(self, sentinel: Any, masters: Any, service_name: str) -> tuple[str, int] | None:
        """The primary's address if this sentinel's answer names a healthy one, the
        sentinel then moved to the head of the list (the I/O of the twins is theirs)."""
        state = masters.get(service_name)
        if not state or not self.check_master_state(state, service_name):  # type: ignore[attr-defined]
            return None
        self._promote(sentinel)
        forced = getattr(self, "_force_master_ip", None)
        return (forced if forced is not None else state["ip"]), state["port"]


class SyncSentinels(_Promotion, redis.sentinel.Sentinel):
    not_found = redis.sentinel.MasterNotFoundError

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._init_promotion()

    def discover_master(self, service_name: str) -> tuple[str, int]:
        errors: list[str] = []
        for sentinel in list(self.sentinels):
            try:
                masters = sentinel.sentinel_masters()
            except (ConnectionError, TimeoutError) as exc:
                errors.append(f"{sentinel} - {exc!r}")
                continue
            if address := self._found(sentinel, masters, service_name):
                return address
        raise self._no_master(service_name, errors)


class AsyncSentinels(_Promotion, redis.asyncio.sentinel.Sentinel):
    not_found = redis.asyncio.sentinel.MasterNotFoundError

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._init_promotion()

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        errors: list[str] = []
        for sentinel in list(self.sentinels):
            try:
                masters = await sentinel.sentinel_masters()
            except (ConnectionError, TimeoutError) as exc:
                errors.append(f"{sentinel} - {exc!r}")
                continue
            if address := self._found(sentinel, masters, service_name):
                return address
        raise self._no_master(service_name, errors)
