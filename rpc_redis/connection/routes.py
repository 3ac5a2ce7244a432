"""Which node a command goes to: one pool on a single node (or under Sentinel), a pool per
node of a Redis Cluster, chosen by the hash slot of the command's key.

The hot paths keep their raw exchanges on a cluster: they ask :class:`SyncRoutes` or
:class:`AsyncRoutes` for the pool of a key's node, and follow a redirection (``MOVED``:
the slot has a new owner, noted at once; ``ASK``: this one command goes to the node
importing the slot, after ``ASKING``) instead of surfacing it. The slot map comes from
``CLUSTER SLOTS``, refreshed when a node is lost. On a single node nothing is hashed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import redis
import redis.asyncio
import redis.exceptions
from redis.crc import key_slot

from ..errors import RedisFailure, classify_redis_error
from .lending import AsyncLender, Lender
from .raw import REDIS_ERRORS, NotSentError, exchange

HASH_SLOTS = 16384
# Redirections one command may follow before its error is let through: a slot moves
# once, and an ASK is followed by at most one MOVED.
MAX_REDIRECTS = 5
# A cluster that answers TRYAGAIN (keys of one slot split by a migration) or CLUSTERDOWN
# (a failover under way) is asked again after this long, within the caller's time.
BUSY_RETRY_SECONDS = 0.05
KEYLESS_COMMANDS = frozenset({"PING", "ASKING", "MULTI", "EXEC", "CLIENT", "CLUSTER", "INFO"})

Address = tuple[str, int]
Command = tuple[Any, ...]
Pool = TypeVar("Pool")
AnyLender = TypeVar("AnyLender", bound=Lender | AsyncLender)


def slot_of(key: str | bytes) -> int:
    """The hash slot of a key, as Redis Cluster computes it (hash tags included)."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))


def command_key(command: Command) -> str | bytes | None:
    """The key that places a command on a node: its first key (for EVAL, its first
    KEYS), or None for a command that names no key."""
    name = command[0].decode() if isinstance(command[0], bytes) else str(command[0])
    name = name.upper()
    if name in KEYLESS_COMMANDS or len(command) < 2:
        return None
    if name in ("EVAL", "EVALSHA"):
        return command[3] if int(command[2]) > 0 else None
    key: str | bytes = command[1]
    return key


class Redirect(NamedTuple):
    """Where an error reply sends a command: the node, and whether ASKING goes first."""

    address: Address
    asking: bool


def redirect_of(response: Any) -> Redirect | None:
    """The redirection a response is (``MOVED`` or ``ASK``), or None."""
    if not isinstance(response, redis.exceptions.AskError):
        return None
    address = (str(response.host), int(response.port))
    return Redirect(address, not isinstance(response, redis.exceptions.MovedError))


def is_busy(response: Any) -> bool:
    """An error reply that clears by itself within moments: TRYAGAIN, CLUSTERDOWN."""
    return isinstance(response, (redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError))


class SlotMap:
    """Which node serves each hash slot: loaded from ``CLUSTER SLOTS``, corrected slot by
    slot by ``MOVED``. Read by threads and the event loop alike; replaced whole."""

    def __init__(self, seeds: Sequence[Address]) -> None:
        self.seeds = list(seeds)
        self._owners: list[Address | None] = [None] * HASH_SLOTS
        self.loaded = False

    def load(self, reply: Any) -> None:
        owners: list[Address | None] = [None] * HASH_SLOTS
        for first, last, primary, *_ in reply:
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            address = (host, int(primary[1]))
            for slot in range(int(first), int(last) + 1):
                owners[slot] = address
        self._owners = owners
        self.loaded = True

    def owner(self, slot: int) -> Address:
        """The node serving ``slot``, or a seed while the map does not say."""
        return self._owners[slot] or self.seeds[0]

    def moved(self, slot: int, address: Address) -> None:
        self._owners[slot] = address

    def candidates(self) -> list[Address]:
        """Nodes to ask for the map: those that served slots, then the seeds."""
        known = list(dict.fromkeys(owner for owner in self._owners if owner is not None))
        return known + [seed for seed in self.seeds if seed not in known]


class Routes(Generic[Pool, AnyLender]):
    """What the sync and async twins share: the one pool, or the slot map and a pool per
    node, made on first use by ``make_pool(address)``; and a lender of each pool's
    connections (``lending.py``), which keeps them between exchanges unless
    ``keep_connections`` is False (a pool the user gave, theirs to share)."""

    def __init__(
        self,
        single: Pool | None = None,
        slot_map: SlotMap | None = None,
        make_pool: Callable[[Address], Pool] | None = None,
        *,
        keep_connections: bool = True,
    ) -> None:
        if (single is None) == (slot_map is None):
            raise ValueError("one pool, or a slot map and a way to make pools")
        self.single = single
        self.slot_map = slot_map
        self.keep_connections = keep_connections
        self._make_pool = make_pool
        self._pools: dict[Address, Pool] = {}
        self._lenders: dict[int, AnyLender] = {}  # by id(pool): each lender holds its pool
        self._lock = threading.Lock()

    def lender(self, pool: Pool) -> AnyLender:
        """The lender of ``pool``'s connections, made on first use."""
        lender = self._lenders.get(id(pool))
        if lender is None:
            with self._lock:
                lender = self._lenders.get(id(pool))
                if lender is None:
                    lender = self._lenders[id(pool)] = self._new_lender(pool)
        return lender

    def _new_lender(self, pool: Pool) -> AnyLender:
        raise NotImplementedError

    def _all_lenders(self) -> list[AnyLender]:
        with self._lock:
            return list(self._lenders.values())

    @property
    def is_cluster(self) -> bool:
        return self.slot_map is not None

    def slot(self, key: str | bytes | None) -> int | None:
        """The key's hash slot on a cluster; None on a single node (or for no key)."""
        if self.slot_map is None or key is None:
            return None
        return slot_of(key)

    def owner(self, key: str | bytes | None) -> Address | None:
        """The node serving ``key`` on a cluster; None on a single node."""
        if self.slot_map is None:
            return None
        if key is None:
            return self.slot_map.candidates()[0]
        return self.slot_map.owner(slot_of(key))

    def same_slot(self, commands: Sequence[Command], key: str | bytes | None = None) -> bool:
        """Whether every command (and ``key``) lies in one slot: always on a single node."""
        if self.slot_map is None:
            return True
        keys = [command_key(command) for command in commands]
        slots = {slot_of(k) for k in (*keys, key) if k is not None}
        return len(slots) <= 1

    def share_slot(self, *keys: str | bytes) -> bool:
        """Whether the keys lie in one slot: always on a single node."""
        return self.slot_map is None or len({slot_of(key) for key in keys}) <= 1

    def pool_for(self, key: str | bytes | None) -> Pool:
        if self.single is not None:
            return self.single
        address = self.owner(key)
        assert address is not None
        return self.pool_at(address)

    def pool_at(self, address: Address) -> Pool:
        if self.single is not None:
            return self.single
        with self._lock:
            pool = self._pools.get(address)
            if pool is None:
                assert self._make_pool is not None
                pool = self._pools[address] = self._make_pool(address)
            return pool

    def addresses(self) -> list[Address]:
        """The nodes this has pools for (none on a single node)."""
        with self._lock:
            return list(self._pools)

    def pools(self) -> list[Pool]:
        if self.single is not None:
            return [self.single]
        with self._lock:
            return list(self._pools.values())

    def follow(self, redirect: Redirect, key: str | bytes | None) -> Pool:
        """The pool a redirection sends a command to; a MOVED corrects the map."""
        if self.slot_map is not None and not redirect.asking and key is not None:
            self.slot_map.moved(slot_of(key), redirect.address)
        return self.pool_at(redirect.address)


def with_asking(commands: Sequence[Command], asking: Sequence[bool]) -> list[Command]:
    """The commands, each one asked for by an ASK preceded by ASKING."""
    sent: list[Command] = []
    for command, ask in zip(commands, asking, strict=True):
        if ask:
            sent.append(("ASKING",))
        sent.append(command)
    return sent


def without_asking(responses: list[Any], asking: Sequence[bool]) -> list[Any]:
    """The responses to :func:`with_asking`'s commands, ASKING's own OKs left out."""
    kept: list[Any] = []
    position = 0
    for ask in asking:
        position += 1 if ask else 0
        kept.append(responses[position])
        position += 1
    return kept


class SyncRoutes(Routes[redis.ConnectionPool, Lender]):
    """The sync twin: for the sync Client and a worker's receiving threads."""

    def _new_lender(self, pool: redis.ConnectionPool) -> Lender:
        return Lender(pool, keeps=self.keep_connections)

    def refresh(self, timeout: float = 5.0) -> None:
        """Load the slot map from the first node that answers ``CLUSTER SLOTS``."""
        if self.slot_map is None:
            return
        error: BaseException | None = None
        for address in self.slot_map.candidates():
            lender = self.lender(self.pool_at(address))
            try:
                connection = lender.lend()
            except REDIS_ERRORS as exc:
                error = exc
                continue
            try:
                connection.send_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
                self.slot_map.load(connection.read_response(timeout=timeout))
                return
            except (*REDIS_ERRORS, redis.exceptions.ResponseError) as exc:
                connection.disconnect()  # type: ignore[no-untyped-call]
                error = exc
            finally:
                lender.give_back(connection)
        assert error is not None
        raise error

    def disconnect(self) -> None:
        for lender in self._all_lenders():
            lender.give_all_back()
        for pool in self.pools():
            pool.disconnect()


class AsyncRoutes(Routes[redis.asyncio.ConnectionPool, AsyncLender]):
    """The asyncio twin, with the routed exchanges the worker and the AsyncClient use."""

    def _new_lender(self, pool: redis.asyncio.ConnectionPool) -> AsyncLender:
        return AsyncLender(pool, keeps=self.keep_connections)

    async def refresh(self, timeout: float = 5.0) -> None:
        """Load the slot map from the first node that answers ``CLUSTER SLOTS``."""
        if self.slot_map is None:
            return
        error: BaseException | None = None
        for address in self.slot_map.candidates():
            try:
                [reply] = await self.exchange_on(
                    self.pool_at(address), [("CLUSTER", "SLOTS")], timeout
                )
            except REDIS_ERRORS as exc:
                error = exc
                continue
            if isinstance(reply, Exception):
                error = reply
                continue
            self.slot_map.load(reply)
            return
        assert error is not None
        raise error

    async def probe(self, key: str | bytes | None, timeout: float) -> None:
        """Raise unless the node serving ``key`` answers a PING (on a cluster, with the
        slot map refreshed first: the node may have been replaced)."""
        await self.refresh(timeout)
        [pong] = await self.exchange_on(self.pool_for(key), [("PING",)], timeout)
        if isinstance(pong, Exception):
            raise pong

    async def exchange_on(
        self, pool: redis.asyncio.ConnectionPool, commands: list[Command], read_timeout: float
    ) -> list[Any]:
        """One exchange on a connection of ``pool``; a connection an error or a cancel
        interrupted is never handed out again half-read. NotSentError if no connection
        could be had (nothing was sent)."""
        lender = self.lender(pool)
        try:
            connection = await lender.lend()
        except REDIS_ERRORS as exc:
            if classify_redis_error(exc) is RedisFailure.CONFIGURATION:
                raise  # a wrong password is no outage
            raise NotSentError(str(exc)) from exc
        try:
            return await exchange(connection, commands, read_timeout)
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        finally:
            await lender.give_back(connection)

    async def exchange(
        self, commands: list[Command], read_timeout: float, *, errors_in_place: bool = False
    ) -> list[Any]:
        """Send each command to its key's node, in one write per node, and read every
        response (error replies as values, in place); redirections and a busy cluster
        are followed, so no MOVED or ASK reaches the caller. A lost node raises, or with
        ``errors_in_place`` its error is the response of each of its commands (the
        others' responses are kept: none is sent twice by a retry)."""
        if self.single is not None:
            try:
                return await self.exchange_on(self.single, commands, read_timeout)
            except REDIS_ERRORS as exc:
                if not errors_in_place:
                    raise
                return [exc] * len(commands)
        deadline = time.monotonic() + read_timeout
        results: list[Any] = [None] * len(commands)
        targets = {index: self.owner(command_key(c)) for index, c in enumerate(commands)}
        asking = dict.fromkeys(targets, False)
        pending = list(range(len(commands)))
        for _ in range(MAX_REDIRECTS + 1):
            by_node: dict[Address, list[int]] = {}
            for index in pending:
                address = targets[index]
                assert address is not None
                by_node.setdefault(address, []).append(index)
            answers = await asyncio.gather(
                *(
                    self._exchange_at(address, [commands[i] for i in indexes],
                                      [asking[i] for i in indexes], deadline)
                    for address, indexes in by_node.items()
                ),
                return_exceptions=True,
            )  # fmt: skip
            lost = [answer for answer in answers if isinstance(answer, BaseException)]
            if lost:
                if not all(isinstance(error, REDIS_ERRORS) for error in lost):
                    raise next(e for e in lost if not isinstance(e, REDIS_ERRORS))
                # A node lost: the next attempt goes where the cluster says now.
                with contextlib.suppress(*REDIS_ERRORS, redis.exceptions.ResponseError):
                    await self.refresh()
                if not errors_in_place:
                    raise lost[0]
            pending = []
            for indexes, answer in zip(by_node.values(), answers, strict=True):
                responses = [answer] * len(indexes) if isinstance(answer, BaseException) else answer
                for index, response in zip(indexes, responses, strict=True):
                    results[index] = response
                    redirect = redirect_of(response)
                    if redirect is not None:
                        self.follow(redirect, command_key(commands[index]))
                        targets[index], asking[index] = redirect.address, redirect.asking
                        pending.append(index)
                    elif is_busy(response) and time.monotonic() < deadline:
                        pending.append(index)
            if not pending:
                break
            if any(is_busy(results[index]) for index in pending):
                await asyncio.sleep(BUSY_RETRY_SECONDS)
        return results

    async def _exchange_at(
        self, address: Address, commands: list[Command], asking: list[bool], deadline: float
    ) -> list[Any]:
        timeout = max(deadline - time.monotonic(), 0.001)
        responses = await self.exchange_on(
            self.pool_at(address), with_asking(commands, asking), timeout
        )
        return without_asking(responses, asking)

    async def transaction(self, commands: list[Command], read_timeout: float) -> list[Any]:
        """MULTI ... EXEC of commands of one slot on its node, in one round trip; its
        responses, the queueing ones first and EXEC's last. A MOVED sends it whole to
        the slot's new owner; a slot half-migrated (ASK, TRYAGAIN) is waited out."""
        transaction = [("MULTI",), *commands, ("EXEC",)]
        key = next((k for k in map(command_key, commands) if k is not None), None)
        deadline = time.monotonic() + read_timeout
        pool = self.pool_for(key)
        while True:
            timeout = max(deadline - time.monotonic(), 0.001)
            responses = await self.exchange_on(pool, transaction, timeout)
            refused = next((r for r in responses[1:-1] if redirect_of(r) or is_busy(r)), None)
            if refused is None or time.monotonic() >= deadline:
                return responses
            redirect = redirect_of(refused)
            if redirect is not None and not redirect.asking:
                pool = self.follow(redirect, key)
            else:
                await asyncio.sleep(BUSY_RETRY_SECONDS)

    async def disconnect(self) -> None:
        for lender in self._all_lenders():
            await lender.give_all_back()
        for pool in self.pools():
            await pool.disconnect()
