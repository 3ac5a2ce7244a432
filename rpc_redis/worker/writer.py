"""Writing to Redis from the worker: outcomes batched per pass of the event loop.

A reply, a dead letter or an acknowledgement is a handful of commands. Those of every
request finished in one pass of the loop go out in one write on one connection and
are read back together; a reliable queue's go in a MULTI/EXEC of their own, so the
reply and the removal from the in-progress list happen together or not at all.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio

from ..connection import REDIS_ERRORS, exchange
from .receiving import Command, raise_first_error

WRITE_READ_TIMEOUT = 10.0


class Writer:
    def __init__(self, pool: redis.asyncio.ConnectionPool) -> None:
        self.pool = pool
        self._outbox: Outbox = []
        self._writes: set[asyncio.Future[None]] = set()

    async def write_with_others(self, commands: list[Command]) -> list[Any]:
        """Queue commands for the next write; their responses (error replies as values)."""
        loop = asyncio.get_running_loop()
        written: asyncio.Future[list[Any]] = loop.create_future()
        self._outbox.append((commands, written))
        if len(self._outbox) == 1:
            loop.call_soon(self._start_write)
        return await written

    async def write_transaction(self, commands: list[Command]) -> list[Any]:
        """MULTI ... EXEC in one round trip: the results of the commands, as EXEC gives
        them (error replies as values). If Redis refused to queue a command (out of
        memory, no permission), none ran: that command's result is the refusal, and
        each other's the EXECABORT that followed."""
        connection = await self.pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            transaction = [("MULTI",), *commands, ("EXEC",)]
            responses = await exchange(connection, transaction, WRITE_READ_TIMEOUT)
        finally:
            await self.pool.release(connection)
        raise_first_error(responses[:1])  # MULTI itself refused: nothing was queued
        queued, executed = responses[1:-1], responses[-1]
        if isinstance(executed, Exception):
            return [result if isinstance(result, Exception) else executed for result in queued]
        return list(executed)

    def take_pending(self) -> Outbox:
        """Hand the writes not yet sent to someone about to write anyway (the receiver,
        whose next BLPOP they ride with); that someone must :meth:`settle` them."""
        outbox, self._outbox = self._outbox, []
        return outbox

    def _start_write(self) -> None:
        outbox = self.take_pending()
        if outbox:  # else the receiver took them
            write = asyncio.ensure_future(self._write(outbox))
            self._writes.add(write)
            write.add_done_callback(self._writes.discard)

    async def _write(self, outbox: Outbox) -> None:
        try:
            connection = await self.pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                results = await exchange(connection, commands_of(outbox), WRITE_READ_TIMEOUT)
            finally:
                await self.pool.release(connection)
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
