"""The sentinels' client, for both flavours, with a discovery that keeps every sentinel.

redis-py's ``discover_master`` moves the sentinel that answered to the head of its list
by an index read before the await: two discoveries at once (a pool's connections
reconnecting together after a failover) can both write the same sentinel in, so that
another is dropped from the list, and with it its connected connections, unclosed.
Here the answering sentinel is found where it is now and swapped in without an await
between, under a lock for threads.

A name that no answering sentinel monitors is said apart from a primary not found
(``UnknownSentinelPrimary``): a mistyped URL is a configuration error, not an outage
to wait out.
"""

from __future__ import annotations

import threading
from typing import Any

import redis.asyncio.sentinel
import redis.sentinel
from redis.exceptions import ConnectionError, TimeoutError

from ..errors import UnknownSentinelPrimary


class _Promotion:
    """What both flavours share: keeping the list whole, and what an answer means."""

    sentinels: list[Any]
    not_found: type[Exception]  # redis-py's MasterNotFoundError of the flavour
    unknown: type[Exception]  # the same, also an UnknownSentinelPrimary

    def _init_promotion(self) -> None:
        self._promotion_lock = threading.Lock()

    def _found(self, sentinel: Any, masters: Any, service_name: str) -> tuple[str, int] | None:
        """The primary's address if this sentinel's answer names a healthy one, the
        sentinel then moved to the head of the list, where it is now."""
        state = masters.get(service_name)
        if not state or not self.check_master_state(state, service_name):  # type: ignore[attr-defined]
            return None
        with self._promotion_lock:
            at = next(i for i, s in enumerate(self.sentinels) if s is sentinel)
            self.sentinels[0], self.sentinels[at] = self.sentinels[at], self.sentinels[0]
        forced = getattr(self, "_force_master_ip", None)
        return (forced if forced is not None else state["ip"]), state["port"]

    def _not_found(self, service_name: str, errors: list[str], known: bool) -> Exception:
        """No healthy primary: unknown to every sentinel that answered, or not found."""
        if not known and len(errors) < len(self.sentinels):
            return self.unknown(f"no sentinel monitors a primary named {service_name!r}")
        info = f" : {', '.join(errors)}" if errors else ""
        return self.not_found(f"No master found for {service_name!r}{info}")


class _SyncUnknown(UnknownSentinelPrimary, redis.sentinel.MasterNotFoundError):
    pass


class _AsyncUnknown(UnknownSentinelPrimary, redis.asyncio.sentinel.MasterNotFoundError):
    pass


class SyncSentinels(_Promotion, redis.sentinel.Sentinel):
    not_found = redis.sentinel.MasterNotFoundError
    unknown = _SyncUnknown

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._init_promotion()

    def discover_master(self, service_name: str) -> tuple[str, int]:
        errors: list[str] = []
        known = False
        for sentinel in list(self.sentinels):
            try:
                masters = sentinel.sentinel_masters()
            except (ConnectionError, TimeoutError) as exc:
                errors.append(f"{sentinel} - {exc!r}")
                continue
            known = known or service_name in masters
            if address := self._found(sentinel, masters, service_name):
                return address
        raise self._not_found(service_name, errors, known)


class AsyncSentinels(_Promotion, redis.asyncio.sentinel.Sentinel):
    not_found = redis.asyncio.sentinel.MasterNotFoundError
    unknown = _AsyncUnknown

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._init_promotion()

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        errors: list[str] = []
        known = False
        for sentinel in list(self.sentinels):
            try:
                masters = await sentinel.sentinel_masters()
            except (ConnectionError, TimeoutError) as exc:
                errors.append(f"{sentinel} - {exc!r}")
                continue
            known = known or service_name in masters
            if address := self._found(sentinel, masters, service_name):
                return address
        raise self._not_found(service_name, errors, known)
