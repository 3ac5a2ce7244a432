"""Taking requests off queues: as many as a worker has free slots, in one round trip."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import redis.asyncio

from .connection import exchange, read_responses, send_commands
from .writer import WRITE_READ_TIMEOUT, Writer, commands_of, raise_first_error, settle


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
