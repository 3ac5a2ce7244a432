"""Writing to Redis from the worker: outcomes batched per pass of the event loop.

A reply, a dead letter or an acknowledgement is a handful of commands. Those of every
request finished in one pass of the loop go out in one write on one connection (on a
cluster, one per node) and are read back together; a reliable queue's go in a
MULTI/EXEC of their own, so the reply and the removal from the in-progress list happen
together or not at all. A receiver about to send its next BLPOP takes the writes bound
for its own node with it (:meth:`Writer.take_pending`); one redirected meanwhile (its
slot moved) goes out again, routed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..connection import REDIS_ERRORS, AsyncRoutes, command_key, redirect_of
from .receiving import Command, raise_first_error

WRITE_READ_TIMEOUT = 10.0


class Writer:
    def __init__(self, routes: AsyncRoutes) -> None:
        self.routes = routes
        self._outbox: Outbox = []
        self._writes: set[asyncio.Future[None]] = set()

    async def write_with_others(self, commands: list[Command]) -> list[Any]:
        """Queue commands for the next write; their responses (error replies as values)."""
        loop = asyncio.get_running_loop()
        written: asyncio.Future[list[Any]] = loop.create_future()
        self._queue((commands, written))
        return await written

    async def write_transaction(self, commands: list[Command]) -> list[Any]:
        """MULTI ... EXEC in one round trip (the commands lie in one hash slot): the
        results of the commands, as EXEC gives them (error replies as values). If Redis
        refused to queue a command (out of memory, no permission), none ran: that
        command's result is the refusal, and each other's the EXECABORT that followed."""
        responses = await self.routes.transaction(commands, WRITE_READ_TIMEOUT)
        raise_first_error(responses[:1])  # MULTI itself refused: nothing was queued
        queued, executed = responses[1:-1], responses[-1]
        if isinstance(executed, Exception):
            return [result if isinstance(result, Exception) else executed for result in queued]
        return list(executed)

    def take_pending(self, key: str | None = None) -> Outbox:
        """Hand the writes not yet sent to someone about to write anyway (the receiver,
        whose next BLPOP they ride with; on a cluster, those in ``key``'s hash slot, on
        its node); that someone must :meth:`settle_riding` them."""
        if key is None or not self.routes.is_cluster:
            outbox, self._outbox = self._outbox, []
            return outbox
        taken = [entry for entry in self._outbox if self.routes.same_slot(entry[0], key)]
        self._outbox = [entry for entry in self._outbox if entry not in taken]
        return taken

    def settle_riding(self, outbox: Outbox, results: list[Any] | BaseException) -> None:
        """Settle writes that rode with a BLPOP; one redirected goes out again, routed."""
        if isinstance(results, BaseException):
            settle(outbox, results)
            return
        for entry in outbox:
            commands, written = entry
            mine, results = results[: len(commands)], results[len(commands) :]
            if any(redirect_of(result) for result in mine):
                self._queue(entry)
            elif not written.done():
                written.set_result(mine)

    def _queue(self, entry: tuple[list[Command], asyncio.Future[list[Any]]]) -> None:
        self._outbox.append(entry)
        if len(self._outbox) == 1:
            asyncio.get_running_loop().call_soon(self._start_write)

    def _start_write(self) -> None:
        outbox = self.take_pending()
        if not outbox:  # the receiver took them
            return
        for group in self._by_node(outbox):
            write = asyncio.ensure_future(self._write(group))
            self._writes.add(write)
            write.add_done_callback(self._writes.discard)

    def _by_node(self, outbox: Outbox) -> list[Outbox]:
        """One write per node on a cluster, so that a lost node holds up only its own."""
        if not self.routes.is_cluster:
            return [outbox]
        groups: dict[object, Outbox] = {}
        for entry in outbox:
            groups.setdefault(self.routes.owner(command_key(entry[0][0])), []).append(entry)
        return list(groups.values())

    async def _write(self, outbox: Outbox) -> None:
        try:
            results = await self.routes.exchange(commands_of(outbox), WRITE_READ_TIMEOUT)
        except BaseException as exc:  # whatever it is, no writer may wait forever
            settle(outbox, exc)
            if isinstance(exc, REDIS_ERRORS):
                return
            raise
        settle(outbox, results)


Outbox = list[tuple[list[Command], "asyncio.Future[list[Any]]"]]


def commands_of(outbox: Outbox) -> list[Command]:
    return [command for commands, _ in outbox for command in commands]


def settle(outbox: Outbox, results: list[Any] | BaseException) -> None:
    """Give each queued write its own responses, or the error that stopped them all."""
    for commands, written in outbox:
        if written.done():
            continue
        if isinstance(results, BaseException):
            written.set_exception(results)
        else:
            mine, results = results[: len(commands)], results[len(commands) :]
            written.set_result(mine)
