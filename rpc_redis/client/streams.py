"""Streamed results on the calling side: ``proxy.stream.kittens(5)`` on either client.

A stream pushes one request (its envelope asks for a stream, ``events/streams.py``)
and reads its own reply key: BLPOP for the next message, and, in the same round trip,
LPOP of up to a window more, so a fast stream costs a round trip per window, not per
item. Everything but the I/O is here once, beneath :class:`Stream` and
:class:`AsyncStream`: what to send, what a message means, the timeouts, the
middleware, and how a stream stopped early is cancelled (its reply key set to a
string, which the worker's next push finds).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .. import protocol
from ..errors import RpcTimeout
from ..events import streams
from .policy import (
    CallSettings,
    ClientHooks,
    Outgoing,
    blpop_timeout,
    effective_timeout,
    new_request_id,
    resolve_timeout,
)

Command = tuple[Any, ...]
# The I/O a stream is handed by its client: send commands in one write, read them all.
Exchange = Callable[[list[Command], str, str, str, float], list[Any]]
AsyncExchange = Callable[[list[Command], str, str, str, float], Awaitable[list[Any]]]
# How long the string that cancels a stream stays in its reply key: longer than any
# worker waits to push its next item (a worker looks at least every second).
CANCEL_TTL_MS = 60_000
# A cancel is one quick SET; it waits no longer than this.
CANCEL_TIMEOUT = 2.0


@dataclass(frozen=True)
class StreamCall:
    """What a stream sends and where it reads, fixed when it is made."""

    service: str
    method: str
    queue: str
    request: dict[str, Any]
    reply_key: str
    timeout: float  # each wait
    ends_at: float | None  # time.monotonic() past which the whole stream has timed out
    deadline: float  # the envelope's: the worker starts it only before then
    window: int

    @classmethod
    def of(
        cls,
        settings: CallSettings,
        service: str,
        method: str,
        params: list[Any] | dict[str, Any] | None,
        queue: str | None,
        timeout: float | None,
        total_timeout: float | None,
        window: int,
    ) -> StreamCall:
        wait = effective_timeout(settings.timeout_for(timeout))
        total = None if total_timeout is None else resolve_timeout(total_timeout)
        streams.stream_member(window)  # a bad window is refused now
        queue_key = settings.queue_for(service, queue)
        return cls(
            service,
            method,
            queue_key,
            protocol.request_object(method, params or [], new_request_id()),
            # In the queue's hash slot: the request and the reads of its items go to one
            # node on a cluster, in one round trip.
            settings.new_reply_key(queue_key),
            wait,
            None if total is None else time.monotonic() + total,
            time.time() + min(wait, total or wait),
            window,
        )

    @property
    def where(self) -> tuple[str, str, str]:
        """service, method and queue: for the errors of an exchange."""
        return self.service, self.method, self.queue

    def message(self, meta: dict[str, str] | None) -> bytes:
        member = streams.stream_member(self.window)
        return protocol.encode_envelope(self.request, self.reply_key, self.deadline, meta, member)

    def next_wait(self) -> float:
        """How long the next read may wait; RpcTimeout once the whole stream's time is up."""
        if self.ends_at is None:
            return self.timeout
        left = self.ends_at - time.monotonic()
        if left <= 0:
            raise RpcTimeout(self.service, self.method, self.timeout)
        return min(self.timeout, left)


class StreamState:
    """One stream's progress, sans I/O: what to send next, what came, what ends it."""

    def __init__(self, call: StreamCall, hooks: ClientHooks | None) -> None:
        self.call = call
        self.hooks = hooks
        self.buffer: deque[Any] = deque()
        self.sent = False
        self.ended = False  # the worker wrote the end, or the stream failed or was closed
        self.taken = 0  # items handed to the caller
        self._error: BaseException | None = None  # ends the stream after the buffer
        self._outgoing: Outgoing | None = None

    def reads(self) -> tuple[list[Command], float]:
        """The commands of the next round trip and how long it may wait: the request
        the first time (after ``before_send``), then BLPOP and LPOP of the reply key."""
        wait = self.call.next_wait()
        commands: list[Command] = []
        if not self.sent:
            meta = None
            if self.hooks is not None:
                self._outgoing = self.hooks.before_send(
                    self.call.service, self.call.request, self.call.deadline
                )
                meta = self._outgoing.meta
            commands.append(("RPUSH", self.call.queue, self.call.message(meta)))
        key = self.call.reply_key
        commands += [("BLPOP", key, blpop_timeout(wait)), ("LPOP", key, self.call.window)]
        return commands, wait

    def took(self, responses: list[Any]) -> None:
        """Read one round trip's answers; a BLPOP that timed out times the stream out."""
        self.sent = True
        popped, more = responses[-2], responses[-1]
        if popped is None:
            raise RpcTimeout(self.call.service, self.call.method, self.call.timeout)
        for raw in [popped[1], *(more or [])]:
            try:
                message = streams.read_message(raw, self.call.request["id"])
            except Exception as exc:  # the error that ends the stream, after the items
                self._error = exc
                self.ended = True
                return
            if isinstance(message, streams.Item):
                self.buffer.append(message.value)
            else:
                self.ended = True
                return

    def next_item(self) -> tuple[bool, Any]:
        """(True, item) if one is here; (False, None) if a read must come first. Raises
        StopIteration at the end, and the error that ended the stream after its items."""
        if self.buffer:
            self.taken += 1
            return True, self.buffer.popleft()
        if self._error is not None:
            error, self._error = self._error, None
            self._report(error)
            raise error
        if self.ended:
            self._report(None)
            raise StopIteration
        return False, None

    def failed(self, error: BaseException) -> list[Command]:
        """The stream failed here (a timeout, Redis failing): it ends, the middleware
        hears of it, and the commands that cancel it on the worker are returned."""
        cancel = self.stop()
        self._report(error)
        return cancel

    def stop(self) -> list[Command]:
        """The commands that cancel the stream on the worker, if it is running there."""
        running = self.sent and not self.ended
        self.ended = True
        self.buffer.clear()
        if not running:
            return []
        return [("SET", self.call.reply_key, streams.CANCELLED, "PX", CANCEL_TTL_MS)]

    def closed(self) -> None:
        """Closed by its caller before its end."""
        self._report(None, {"items": self.taken, "cancelled": True})

    def _report(self, error: BaseException | None, result: Any = None) -> None:
        """``after_reply``, once: the stream's end ({"items": N}), or what failed it."""
        outgoing, self._outgoing = self._outgoing, None
        if outgoing is not None:
            outgoing.outcome = result or {"items": self.taken}
            outgoing.finish(error)


class Stream:
    """The items of a streamed call, as they come; iterate it once.

    ``close()`` (or the end of a ``with`` block, or dropping it after a ``break``)
    cancels the stream: the generator on the worker is closed soon after.
    """

    def __init__(self, call: StreamCall, hooks: ClientHooks | None, exchange: Exchange) -> None:
        self._state = StreamState(call, hooks)
        self._exchange = exchange

    @property
    def reply_key(self) -> str:
        return self._state.call.reply_key

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        state = self._state
        while True:
            found, item = state.next_item()
            if found:
                return item
            try:
                commands, wait = state.reads()
                state.took(self._exchange(commands, *state.call.where, wait))
            except Exception as exc:
                self._cancel(state.failed(exc))
                raise

    def close(self) -> None:
        """Stop reading; the worker closes the generator at its next item."""
        if not self._state.ended:
            self._cancel(self._state.stop())
            self._state.closed()

    def _cancel(self, commands: list[Command]) -> None:
        if commands:
            with contextlib.suppress(Exception):  # best effort: the TTL ends it otherwise
                self._exchange(commands, *self._state.call.where, CANCEL_TIMEOUT)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class AsyncStream:
    """The asyncio twin of :class:`Stream`: ``async for``, ``aclose()``, ``async with``.

    Cancelling the task that awaits an item cancels the stream too.
    """

    def __init__(
        self,
        call: StreamCall,
        hooks: ClientHooks | None,
        exchange: AsyncExchange,
        background: Callable[[Awaitable[Any]], None],
    ) -> None:
        """``background``: runs, on the client's loop, a cancel nobody can await (one
        from ``__del__``, which may run on any thread)."""
        self._state = StreamState(call, hooks)
        self._exchange = exchange
        self._background = background
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it is read on

    @property
    def reply_key(self) -> str:
        return self._state.call.reply_key

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Any:
        state = self._state
        self._loop = asyncio.get_running_loop()
        while True:
            try:
                found, item = state.next_item()
            except StopIteration:
                raise StopAsyncIteration from None
            if found:
                return item
            try:
                commands, wait = state.reads()
                state.took(await self._exchange(commands, *state.call.where, wait))
            except asyncio.CancelledError:
                self._background(self._cancel(state.stop()))
                state.closed()
                raise
            except Exception as exc:
                await self._cancel(state.failed(exc))
                raise

    async def aclose(self) -> None:
        """Stop reading; the worker closes the generator at its next item."""
        if not self._state.ended:
            await self._cancel(self._state.stop())
            self._state.closed()

    async def _cancel(self, commands: list[Command]) -> None:
        if commands:
            with contextlib.suppress(Exception):  # best effort: the TTL ends it otherwise
                await self._exchange(commands, *self._state.call.where, CANCEL_TIMEOUT)

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        state, loop = self._state, self._loop
        if not state.ended and loop is not None and not loop.is_closed():
            with contextlib.suppress(Exception):
                loop.call_soon_threadsafe(self._background, self._cancel(state.stop()))
                state.closed()
