"""Receiving on the event loop: taking as many requests as a worker has free slots,
in one round trip, each handled in a task of its own.

A worker receives here when its services have only ``async def`` methods, or its
queues are reliable; plain functions are received in threads instead (``lanes.py``).
Each receiver has a :class:`Link`: its connection, moved to another node when the
cluster redirects its queues' slot, and whether its commands must be asked for (ASK).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any

from ..connection import REDIS_ERRORS, exchange, read_responses, redirect_of, send_commands
from ..connection.routes import with_asking, without_asking
from .connections import ReceivingConnections
from .outage import Outages
from .receiving import (
    BUSY_PAUSE_SECONDS,
    READ_GRACE_SECONDS,
    REFUSAL_PAUSE_SECONDS,
    AfterFailure,
    Command,
    TakenThenFailed,
    parse_received,
    raise_first_error,
    raise_unless_taken,
    receive_commands,
    rotate,
)
from .reliable import Reliability
from .serving import Serving
from .writer import WRITE_READ_TIMEOUT, Writer, commands_of


class Link:
    """One receiver's connection to the node serving its queues, and what it knows of
    the slot there: ASK (asked for, one command at a time) or not."""

    def __init__(self, connections: ReceivingConnections, queues: list[str]) -> None:
        self.connections = connections
        self.queues = queues
        self.connection = connections.new(queues[0])
        self.asking = False

    def sent(self, commands: list[Command]) -> list[Command]:
        if not self.asking:
            return commands
        return with_asking(commands, [True] * len(commands))

    def received(self, responses: list[Any]) -> list[Any]:
        if not self.asking:
            return responses
        return without_asking(responses, [True] * (len(responses) // 2))

    async def follow(self, error: BaseException) -> None:
        """To the node a redirection names (a MOVED also corrects the slot map)."""
        redirect = redirect_of(error)
        assert redirect is not None
        await self.connection.disconnect()
        self.connection = self.connections.following(redirect, self.queues[0])
        self.asking = redirect.asking

    async def rehome(self) -> None:
        """After an outage: to the node serving the queues now, if another (a failover)."""
        owner = self.connections.owner(self.queues[0])
        here = (self.connection.host, self.connection.port)
        if owner is not None and owner != here:
            await self.connection.disconnect()
            self.connection = self.connections.new(self.queues[0])
            self.asking = False


class LoopReceivers:
    """A worker's receivers on its event loop, one connection each, sharing its slots:
    one for each reliable queue (BLMOVE takes one source list), one for the rest."""

    def __init__(
        self,
        serving: Serving,
        outages: Outages,
        connections: ReceivingConnections,
        queue_groups: list[list[str]],
        *,
        concurrency: int,
        block_seconds: float,
    ) -> None:
        self.serving = serving
        self.outages = outages
        self.connections = connections
        self.queue_groups = queue_groups
        self.writer: Writer = serving.writer
        self.reliability: Reliability = serving.reliability
        self.concurrency = concurrency
        self.block_seconds = block_seconds
        self.slots = Slots(concurrency)
        self.connected = asyncio.Event()  # every connection is up, or met an outage

    async def run(self) -> None:
        """Receive until the worker stops; requests taken are handled in tasks of their own."""
        links = [Link(self.connections, queues) for queues in self.queue_groups]
        try:
            for link in links:
                with contextlib.suppress(*REDIS_ERRORS):  # the receive loop meets the outage
                    await link.connection.connect()  # type: ignore[no-untyped-call]
            self.connected.set()
            await asyncio.gather(*(self._receive(link) for link in links))
        finally:
            for link in links:
                await link.connection.disconnect()

    async def _receive(self, link: Link) -> None:
        """Pop requests while there are free slots; each runs as a task holding a slot."""
        outages, slots, most = self.outages, self.slots, self.concurrency
        # Alone, a receiver takes every free slot and asks for that many requests in
        # its one round trip. Beside others, it blocks holding one slot, and takes more
        # only once a request has come: a slot held in a blocked BLPOP is idle.
        alone = len(self.queue_groups) == 1
        queues = link.queues
        while not outages.stop_requested:
            taken = await slots.take(most if alone else 1)
            if outages.stop_requested:
                slots.give_back(taken)
                break
            trouble: Exception | None = None
            try:
                queue, messages = await self._take_requests(link, taken)
                if messages and not alone:
                    more = slots.take_now(most)
                    taken += more
                    messages = await with_more(queue, messages, self._take_more(link, queue, more))
            except TakenThenFailed as partial:
                queue, messages, trouble = partial.queue, partial.requests, partial.error
            except Exception as exc:
                slots.give_back(taken)
                if not await self._after_failure(exc, link):
                    break
                continue
            if trouble is None:
                outages.note_refusal(queues, None)
            slots.give_back(taken - len(messages))
            for raw in messages:
                self.serving.handle_soon(queue, raw).add_done_callback(lambda _: slots.give_back())
            if trouble is not None and not await self._after_failure(trouble, link):
                break
            if messages:
                # One pass for the handlers just started: those that finish without
                # waiting send their replies with the next BLPOP.
                await asyncio.sleep(0)

    async def _after_failure(self, error: Exception, link: Link) -> bool:
        """Ride out a failed pop as the shared rules say; False: stop receiving."""
        action = self.outages.ride_out(error, link.queues)
        if action is AfterFailure.STOP:
            return False
        if action is AfterFailure.REDIRECT:
            await link.follow(error)
            return True
        if action is AfterFailure.RETRY_SOON:
            return not await self.outages.pause(BUSY_PAUSE_SECONDS)
        if action is AfterFailure.PAUSE:
            return not await self.outages.pause(REFUSAL_PAUSE_SECONDS)
        if self.outages.stop_requested or not await self.outages.wait(error, link.queues[0]):
            return False
        await link.rehome()
        return True

    async def _take_requests(self, link: Link, up_to: int) -> tuple[str, list[bytes]]:
        queue = link.queues[0]
        if self.reliability.is_reliable(queue):
            in_progress = self.reliability.in_progress_key(queue)
            return await move_requests(link, queue, in_progress, up_to, self.block_seconds)
        return await pop_requests(link, link.queues, up_to, self.block_seconds, self.writer)

    async def _take_more(self, link: Link, queue: str, count: int) -> list[bytes]:
        """Up to ``count`` more requests from ``queue``, without blocking."""
        if not count:
            return []
        if self.reliability.is_reliable(queue):
            in_progress = self.reliability.in_progress_key(queue)
            return await move_more(link, queue, in_progress, count)
        return await pop_more(link, queue, count)


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
    link: Link,
    queues: list[str],
    up_to: int,
    block_seconds: float,
    writer: Writer | None = None,
) -> tuple[str, list[bytes]]:
    """Wait for a request; take up to ``up_to`` from its queue in as few round trips.

    With one queue, BLPOP and an LPOP of the rest go out together; with several, the
    LPOP follows once BLPOP has said which queue had work. ``queues`` is rotated, so a
    busy service cannot starve the others. The writer's pending writes (replies just
    finished, for this node) ride in front of the BLPOP, in the same write, and are
    settled as soon as their responses arrive, before the BLPOP blocks: one round trip
    per request.
    """
    rotate(queues)
    rest = up_to - 1
    rest_pipelined = rest if len(queues) == 1 else 0
    commands = link.sent(receive_commands(queues, block_seconds, rest_pipelined))
    riding = writer.take_pending(queues[0]) if writer is not None else []
    riding_commands = commands_of(riding)
    connection = link.connection
    try:
        await send_commands(connection, riding_commands + commands)
        answers = await read_responses(connection, len(riding_commands), WRITE_READ_TIMEOUT)
    except BaseException as exc:  # the writes' owners retry them; no one waits forever
        if writer is not None:
            writer.settle_riding(riding, exc)
        raise
    if writer is not None:
        writer.settle_riding(riding, answers)
    responses = await read_responses(connection, len(commands), block_seconds + READ_GRACE_SECONDS)
    received = parse_received(link.received(responses), queues, rest_pipelined)
    if received.queue is None or received.request is None:
        # An unblocked BLPOP (at stop) may still be followed by a successful LPOP.
        return received.more_from, received.more
    popped = [received.request, *received.more]
    if rest and not rest_pipelined:
        popped = await with_more(received.queue, popped, pop_more(link, received.queue, rest))
    return received.queue, popped


async def move_requests(
    link: Link,
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
    responses = link.received(
        await exchange(link.connection, link.sent(commands), block_seconds + READ_GRACE_SECONDS)
    )
    if isinstance(responses[0], Exception):
        raise responses[0]
    moved = [responses[0]] if responses[0] is not None else []
    raise_unless_taken(queue, moved, responses[1:])
    waiting = int(responses[1]) if up_to > 1 else 0
    if moved and waiting:
        more = move_more(link, queue, in_progress, min(waiting, up_to - 1))
        moved = await with_more(queue, moved, more)
    return queue, moved


async def with_more(queue: str, taken: list[bytes], more: Awaitable[list[bytes]]) -> list[bytes]:
    """``taken`` and what ``more`` takes beside them from ``queue``. However ``more``
    fails (a slot migrating, a refusal, a lost connection), those taken already are
    never dropped: TakenThenFailed carries them, and any ``more`` took before failing,
    to be served before its error is ridden out."""
    try:
        return taken + await more
    except TakenThenFailed as partial:
        raise TakenThenFailed(queue, taken + partial.requests, partial.error) from None
    except Exception as exc:
        raise TakenThenFailed(queue, taken, exc) from None


async def pop_more(link: Link, queue: str, count: int) -> list[bytes]:
    """Up to ``count`` requests from ``queue``, without blocking (LPOP with a count)."""
    [more] = link.received(await exchange(link.connection, link.sent([("LPOP", queue, count)]), 5))
    raise_first_error([more])
    return list(more or [])


async def move_more(link: Link, queue: str, in_progress: str, count: int) -> list[bytes]:
    """Up to ``count`` requests moved from ``queue`` to an in-progress list, without
    blocking; those moved are never dropped for an error that came after them."""
    commands: list[Command] = [("LMOVE", queue, in_progress, "LEFT", "RIGHT")] * count
    responses = link.received(await exchange(link.connection, link.sent(commands), 5))
    moved = [r for r in responses if r is not None and not isinstance(r, Exception)]
    raise_unless_taken(queue, moved, responses)
    return moved
