"""Receiving on the event loop: taking as many requests as a worker has free slots,
in one round trip, each handled in a task of its own.

A worker receives here when its services have only ``async def`` methods, or its
queues are reliable; plain functions are received in threads instead (``lanes.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, cast

import redis.asyncio
import redis.exceptions

from ..connection import REDIS_ERRORS, exchange, read_responses, send_commands
from .reliable import Reliability
from .writer import WRITE_READ_TIMEOUT, Writer, commands_of, raise_first_error, settle

if TYPE_CHECKING:
    from .lifecycle import Worker


class LoopReceivers:
    """A worker's receivers on its event loop, one connection each, sharing its slots:
    one for each reliable queue (BLMOVE takes one source list), one for the rest."""

    def __init__(
        self,
        worker: Worker,
        queue_groups: list[list[str]],
        writer: Writer,
        reliability: Reliability,
    ) -> None:
        self.worker = worker
        self.queue_groups = queue_groups
        self.writer = writer
        self.reliability = reliability
        self.slots = Slots(worker.concurrency)
        self.connected = asyncio.Event()  # every connection is up, or met an outage

    async def run(self) -> None:
        """Receive until the worker stops; requests taken are handled in the worker's tasks."""
        connections = [self.worker.receiving_connection() for _ in self.queue_groups]
        try:
            for connection in connections:
                with contextlib.suppress(*REDIS_ERRORS):  # the receive loop meets the outage
                    await connection.connect()  # type: ignore[no-untyped-call]
            self.connected.set()
            await asyncio.gather(
                *(
                    self._receive(connection, queues)
                    for connection, queues in zip(connections, self.queue_groups, strict=True)
                )
            )
        finally:
            for connection in connections:
                await connection.disconnect()

    async def _receive(self, connection: redis.asyncio.Connection, queues: list[str]) -> None:
        """Pop requests while there are free slots; each runs as a task holding a slot."""
        worker, slots, most = self.worker, self.slots, self.worker.concurrency
        # Alone, a receiver takes every free slot and asks for that many requests in
        # its one round trip. Beside others, it blocks holding one slot, and takes more
        # only once a request has come: a slot held in a blocked BLPOP is idle.
        alone = len(self.queue_groups) == 1
        while not worker.stopping:
            taken = await slots.take(most if alone else 1)
            if worker.stopping:
                slots.give_back(taken)
                break
            try:
                queue, messages = await self._take_requests(connection, queues, taken)
                if messages and not alone:
                    more = slots.take_now(most)
                    taken += more
                    messages += await self._take_more(connection, queue, more)
            except REDIS_ERRORS as exc:
                slots.give_back(taken)
                if not worker.stopping and not await worker.wait_for_redis(exc):
                    break
                continue
            except redis.exceptions.ResponseError as exc:  # e.g. a queue key holding a string
                slots.give_back(taken)
                worker.note_refusal(queues, exc)
                if await worker.sleep_unless_stopped(1.0):
                    break
                continue
            worker.note_refusal(queues, None)
            slots.give_back(taken - len(messages))
            for raw in messages:
                worker.handle_soon(queue, raw).add_done_callback(lambda _: slots.give_back())
            if messages:
                # One pass for the handlers just started: those that finish without
                # waiting send their replies with the next BLPOP.
                await asyncio.sleep(0)

    async def _take_requests(
        self, connection: redis.asyncio.Connection, queues: list[str], up_to: int
    ) -> tuple[str, list[bytes]]:
        block_seconds = self.worker.block_seconds
        if self.worker.is_reliable(queues[0]):
            in_progress = self.reliability.in_progress_key(queues[0])
            return await move_requests(connection, queues[0], in_progress, up_to, block_seconds)
        return await pop_requests(connection, queues, up_to, block_seconds, self.writer)

    async def _take_more(
        self, connection: redis.asyncio.Connection, queue: str, count: int
    ) -> list[bytes]:
        """Up to ``count`` more requests from ``queue``, without blocking."""
        if not count:
            return []
        if self.worker.is_reliable(queue):
            in_progress = self.reliability.in_progress_key(queue)
            return await move_more(connection, queue, in_progress, count)
        return await pop_more(connection, queue, count)


class Slots:
    """A worker's free request slots, shared by its receivers, taken in bulk."""

    def __init__(self, count: int) -> None:
        self.free = count
        self._freed = asyncio.Event()
        self._freed.set()

    async def take(self, most: int) -> int:
        """Wait for a free slot, then take up to ``most`` of those free."""
        while self.free == 0:
            self._freed.clear()
            await self._freed.wait()
        return self.take_now(most)

    def take_now(self, most: int) -> int:
        """Take up to ``most`` free slots, without waiting; possibly none."""
        taken = min(most, self.free)
        self.free -= taken
        return taken

    def give_back(self, count: int = 1) -> None:
        if count:
            self.free += count
            self._freed.set()


async def pop_requests(
    connection: redis.asyncio.Connection,
    queues: list[str],
    up_to: int,
    block_seconds: float,
    writer: Writer | None = None,
) -> tuple[str, list[bytes]]:
    """Wait for a request; take up to ``up_to`` from its queue in as few round trips.

    With one queue, BLPOP and an LPOP of the rest go out together; with several, the
    LPOP follows once BLPOP has said which queue had work. ``queues`` is rotated, so a
    busy service cannot starve the others. The writer's pending writes (replies just
    finished) ride in front of the BLPOP, in the same write, and are settled as soon as
    their responses arrive, before the BLPOP blocks: one round trip per request.
    """
    if len(queues) > 1:
        queues.append(queues.pop(0))
    rest = up_to - 1
    rest_pipelined = len(queues) == 1 and rest > 0
    commands: list[tuple[Any, ...]] = [("BLPOP", *queues, block_seconds)]
    if rest_pipelined:
        commands.append(("LPOP", queues[0], rest))
    riding = writer.take_pending() if writer is not None else []
    riding_commands = commands_of(riding)
    try:
        await send_commands(connection, riding_commands + commands)
        settle(riding, await read_responses(connection, len(riding_commands), WRITE_READ_TIMEOUT))
    except BaseException as exc:  # the writes' owners retry them; no one waits forever
        settle(riding, exc)
        raise
    responses = await read_responses(connection, len(commands), block_seconds + 5)
    raise_first_error(responses)
    popped, more = responses[0], responses[1] if rest_pipelined else None
    if popped is None:
        # An unblocked BLPOP (at stop) may still be followed by a successful LPOP.
        return queues[0], list(more or [])
    queue_name, first = cast(tuple[bytes, bytes], popped)
    queue = queue_name.decode()
    if rest and not rest_pipelined:
        [more] = await exchange(connection, [("LPOP", queue, rest)], 5)
        raise_first_error([more])
    return queue, [first, *(more or [])]


async def move_requests(
    connection: redis.asyncio.Connection,
    queue: str,
    in_progress: str,
    up_to: int,
    block_seconds: float,
) -> tuple[str, list[bytes]]:
    """BLMOVE a request into an in-progress list, and up to ``up_to - 1`` more waiting.

    The move is atomic in Redis: a crash leaves each request on the queue or in the
    in-progress list, never nowhere. LMOVE takes no count, so an LLEN rides with the
    BLMOVE, and a second round trip moves only as many as were waiting.
    """
    commands: list[tuple[Any, ...]] = [
        ("BLMOVE", queue, in_progress, "LEFT", "RIGHT", block_seconds)
    ]
    if up_to > 1:
        commands.append(("LLEN", queue))
    responses = await exchange(connection, commands, block_seconds + 5)
    raise_first_error(responses)
    moved = [responses[0]] if responses[0] is not None else []
    waiting = int(responses[1]) if up_to > 1 else 0
    if moved and waiting:
        moved += await move_more(connection, queue, in_progress, min(waiting, up_to - 1))
    return queue, moved


async def pop_more(connection: redis.asyncio.Connection, queue: str, count: int) -> list[bytes]:
    """Up to ``count`` requests from ``queue``, without blocking (LPOP with a count)."""
    [more] = await exchange(connection, [("LPOP", queue, count)], 5)
    raise_first_error([more])
    return list(more or [])


async def move_more(
    connection: redis.asyncio.Connection, queue: str, in_progress: str, count: int
) -> list[bytes]:
    """Up to ``count`` requests moved from ``queue`` to an in-progress list, without blocking."""
    moved = await exchange(connection, [("LMOVE", queue, in_progress, "LEFT", "RIGHT")] * count, 5)
    raise_first_error(moved)
    return [message for message in moved if message is not None]
