"""Streamed results: a generator method's items pushed to its caller's reply key as they
come, never more than the caller's window waiting there.

A stream runs on the event loop, holding one of the worker's slots from its first item
to its last, like any call. An async generator is pulled on the loop; a plain one on
the handler threads, a batch at a time. A batch ends when it fills the room the reply
key has left, or once pulling it has taken BATCH_SECONDS, so quick items go out
together in one round trip and a slow one goes out at once. Each push is one Lua step
(``lua/push_items.lua``) that writes only what fits the window; while the caller lets
the window stay full, the generator is not pulled, so the worker holds at most one
batch. The caller ends a stream early by setting its reply key to a string, which the
next push (or, while the generator is slow, the next look) finds: the generator is
closed there, its ``finally`` blocks run. A caller that takes nothing for the reply
TTL is taken for gone, and its stream closed in the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from ..errors import TimeLimitExceeded
from ..events import streams
from .dispatch import OpenStream
from .threads import HandlerThreads
from .writer import Writer

logger = logging.getLogger("rpc_redis.worker")

PUSH_ITEMS_SCRIPT = (resources.files(__package__) / "lua" / "push_items.lua").read_text()
BATCH_SECONDS = 0.001
CANCEL_CHECK_SECONDS = 1.0
# How often a full window is looked at again: from a millisecond, doubling up to this.
LAST_POLL_DELAY = 0.05

# What the push script answers, instead of a count, when the stream must stop.
CANCELLED = -1
KEY_TAKEN = -2


@dataclass
class Pulled:
    """What one pull from a generator brought: items, and whether (and how) it ended."""

    items: list[Any] = field(default_factory=list)
    ended: bool = False
    error: Exception | None = None


class Streaming:
    """A worker's streams: given each opened stream by ``Serving``, it runs it to its end."""

    def __init__(self, writer: Writer, *, reply_ttl_ms: int, threads: HandlerThreads) -> None:
        self.writer = writer
        self.reply_ttl_ms = reply_ttl_ms
        self.threads = threads

    async def run(self, opened: OpenStream, reply_to: str, window: int) -> bool:
        """Stream every item and the end; True once the end is written, False if the
        caller cancelled or went away (the generator is closed either way)."""
        return await StreamRun(self, opened, reply_to, window).run()


class StreamRun:
    """One stream, from its first pull to its end."""

    def __init__(
        self, streaming: Streaming, opened: OpenStream, reply_to: str, window: int
    ) -> None:
        self.streaming = streaming
        self.opened = opened
        self.reply_to = reply_to
        self.window = window
        self.request_id = opened.call.request_id
        self.name = f"{opened.call.service}.{opened.call.method}"
        self.is_async = hasattr(opened.generator, "__anext__")
        self.limit = opened.handler.limit
        self.sent = 0  # items in the reply key (or already taken from it)
        self.length = 0  # the reply list's length, as last seen
        self.started = False  # a first push went in
        self.exhausted = False  # the generator returned or raised: nothing to close
        self._end: bytes | None = None  # the message that ends the stream, once made
        self._pulling: asyncio.Future[Pulled] | None = None

    async def run(self) -> bool:
        pending: list[bytes] = []
        try:
            while True:
                if not pending:
                    if self._end is not None:
                        return True  # pushed, with everything before it
                    pulled = await self._pull(max(self.window - self.length, 1))
                    if pulled is None:
                        return False  # cancelled while the generator was slow
                    pending = self._messages(pulled)
                pushed = await self._push(pending)
                if pushed is None:
                    return False
                pending = pending[pushed:]
                more = pending or self._end is None
                if more and self.length >= self.window and not await self._wait_for_room():
                    return False
        finally:
            await self._close()

    # -- the generator ---------------------------------------------------------------

    def _messages(self, pulled: Pulled) -> list[bytes]:
        """The messages for a pull's items, then the end if the generator ended; an
        item that cannot be written as JSON ends the stream with an error instead,
        after the items before it."""
        messages: list[bytes] = []
        for item in pulled.items:
            message = streams.item_message(self.request_id, item)
            if message is None:
                self._end = self._failed(streams.unserialisable_item(item))
                return [*messages, self._end]
            messages.append(message)
        self.exhausted = pulled.ended or pulled.error is not None
        if pulled.error is not None:
            self._end = self._failed(pulled.error)
        elif pulled.ended:
            items = self.sent + len(messages)
            self.opened.handler.finished(self.opened.call, {"items": items})
            self._end = streams.end_message(self.request_id, items)
        return messages if self._end is None else [*messages, self._end]

    def _failed(self, error: Exception) -> bytes:
        rpc_error = self.opened.handler.failed(self.opened.call, error)
        return streams.error_message(self.request_id, rpc_error)

    async def _pull(self, room: int) -> Pulled | None:
        """The next batch; None if the caller cancelled while waiting for it. Past the
        time limit, a Pulled whose error is TimeLimitExceeded."""
        if self._pulling is None:
            self._pulling = self._start_pull(room)
        started = time.monotonic()
        while True:
            wait = CANCEL_CHECK_SECONDS
            if self.limit is not None:
                wait = min(wait, max(started + self.limit - time.monotonic(), 0))
            done, _ = await asyncio.wait({self._pulling}, timeout=wait)
            if done:
                pulled, self._pulling = self._pulling.result(), None
                return pulled
            if self.limit is not None and time.monotonic() - started >= self.limit:
                logger.error("%s ran past its time limit of %ss", self.name, self.limit)
                return Pulled(error=TimeLimitExceeded(data={"limit": self.limit}))
            if await self._push([]) is None:  # has the caller cancelled meanwhile?
                return None

    def _start_pull(self, room: int) -> asyncio.Future[Pulled]:
        generator, context = self.opened.generator, self.opened.running_in
        if self.is_async:
            # A task copies the context it is made in: the generator's, its call current.
            return context.run(asyncio.ensure_future, pull_async(generator, room))
        return asyncio.ensure_future(
            self.streaming.threads.run(lambda: context.run(pull_plain, generator, room))
        )

    async def _close(self) -> None:
        """Close a generator stopped before its end (its ``finally`` blocks run), unless
        it is stuck past its time limit in a thread, where nothing can stop it."""
        pulling = self._pulling
        if self.is_async and pulling is not None:
            pulling.cancel()
            with contextlib.suppress(BaseException):
                await pulling
        elif pulling is not None and not pulling.done():
            return
        if self.exhausted:
            return
        generator, context = self.opened.generator, self.opened.running_in
        try:
            if self.is_async:
                await context.run(asyncio.ensure_future, generator.aclose())
            else:
                await self.streaming.threads.run(lambda: context.run(generator.close))
        except Exception as exc:
            logger.error("closing %s raised %s: %s", self.name, type(exc).__name__, exc)

    # -- the reply key ---------------------------------------------------------------

    async def _push(self, messages: list[bytes]) -> int | None:
        """Push what fits; how many went in, or None if the stream is over (cancelled,
        a reply key that is not the stream's own, Redis failing). With no messages, a
        look at the list's length and at a cancel."""
        first = "0" if self.started or not messages else "1"
        ttl_ms = self.streaming.reply_ttl_ms
        command = ("EVAL", PUSH_ITEMS_SCRIPT, 1, self.reply_to, self.window, ttl_ms, first)
        try:
            [answer] = await self.streaming.writer.write_with_others([(*command, *messages)])
            if isinstance(answer, Exception):
                raise answer
        except Exception as exc:
            logger.error("stream %s to %s ended: Redis failed: %s", self.name, self.reply_to, exc)
            return None
        pushed, self.length = int(answer[0]), int(answer[1])
        if pushed == CANCELLED:
            logger.debug("stream %s cancelled by its caller after %d items", self.name, self.sent)
            return None
        if pushed == KEY_TAKEN:
            logger.warning(
                "stream %s not started: its reply key %s already exists", self.name, self.reply_to
            )
            return None
        self.started = self.started or pushed > 0
        ends = any(message is self._end for message in messages[:pushed])
        self.sent += pushed - ends
        return pushed

    async def _wait_for_room(self) -> bool:
        """Wait while the window is full; False if the stream is over meanwhile, or if
        its caller took nothing for the reply TTL (it is taken for gone)."""
        delay = 0.001
        give_up_at = time.monotonic() + self.streaming.reply_ttl_ms / 1000
        while self.length >= self.window:
            if time.monotonic() > give_up_at:
                logger.warning(
                    "stream %s to %s closed after %d items: its caller took none for %gs",
                    self.name,
                    self.reply_to,
                    self.sent,
                    self.streaming.reply_ttl_ms / 1000,
                )
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, LAST_POLL_DELAY)
            if await self._push([]) is None:
                return False
        return True


def pull_plain(generator: Any, room: int) -> Pulled:
    """Pull up to ``room`` items from a plain generator, for BATCH_SECONDS at most."""
    pulled = Pulled()
    started = time.perf_counter()
    try:
        while len(pulled.items) < room:
            pulled.items.append(next(generator))
            if time.perf_counter() - started >= BATCH_SECONDS:
                break
    except StopIteration:
        pulled.ended = True
    except Exception as exc:
        pulled.error = exc
    return pulled


async def pull_async(generator: Any, room: int) -> Pulled:
    """Pull up to ``room`` items from an async generator, for BATCH_SECONDS at most."""
    pulled = Pulled()
    started = time.perf_counter()
    try:
        while len(pulled.items) < room:
            pulled.items.append(await generator.__anext__())
            if time.perf_counter() - started >= BATCH_SECONDS:
                break
    except StopAsyncIteration:
        pulled.ended = True
    except Exception as exc:
        pulled.error = exc
    return pulled
