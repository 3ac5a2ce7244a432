"""Streamed results: a generator method's items pushed to its caller's reply key as they
come, never more than the caller's window waiting there.

A stream holds one of the worker's slots from its first item to its last, like any
call, and runs as a small pipeline. A producer runs the generator: a plain one on a
handler thread of its own, an async one in a task, each with its call current. It may
be ahead of Redis by at most ``window`` items (credit, given back as items go into the
reply key), so a slow caller holds the generator at its ``yield`` and the worker never
holds more than a window of items. The pump, on the event loop, pushes whatever the
producer has made since its last push, in one Lua step (``lua/push_items.lua``) that
writes only what fits the window: an item made alone goes out at once, items made
while a push is in flight go out together.

A caller ends a stream early by setting its reply key to a string, which the next push
(or, while the generator is slow, a look every CANCEL_CHECK_SECONDS) finds; a caller
that takes nothing for the reply TTL is taken for gone. Either way the generator is
closed where it stands (its ``finally`` blocks run): an async one at once, a plain one
when its thread gets it back from the item it is making.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from typing import Any

from .. import protocol
from ..errors import TimeLimitExceeded
from ..events import streams
from ..printable import printable
from . import scripts
from .dispatch import OpenStream
from .threads import HandlerThreads
from .writer import Writer

logger = logging.getLogger("rpc_redis.worker")

PUSH_ITEMS_SCRIPT = scripts.load("push_items")
CANCEL_CHECK_SECONDS = 1.0
# How often a full window is looked at again: from a millisecond, doubling up to this.
LAST_POLL_DELAY = 0.05
# What the push script answers, instead of a count, when the stream must stop.
CANCELLED = -1
KEY_TAKEN = -2


class Streaming:
    """A worker's streams: given each opened stream by ``Serving``, it runs it to its end."""

    def __init__(
        self,
        writer: Writer,
        *,
        reply_ttl_ms: int,
        threads: HandlerThreads,
        max_item_bytes: int | None = None,
    ) -> None:
        """``max_item_bytes``: the most one item's message may take (the worker's
        --max-reply-bytes); a larger item ends the stream with 'Reply too large'."""
        self.writer = writer
        self.reply_ttl_ms = reply_ttl_ms
        self.threads = threads
        self.max_item_bytes = max_item_bytes

    async def run(self, opened: OpenStream, reply_to: str, window: int) -> bool:
        """Stream every item and the end; True once the end is written, False if the
        caller cancelled or went away (the generator is closed either way)."""
        if hasattr(opened.generator, "__anext__"):
            producer: Producer = TaskProducer(opened, window)
        else:
            producer = ThreadProducer(opened, window, self.threads)
        return await StreamRun(self, opened, producer, reply_to, window).run()


# -- producers ---------------------------------------------------------------------------


class Producer:
    """Runs a generator ahead of the pump, by at most its credit: what it made waits in
    ``made``; once it returns or raises, ``finished`` is set (``error`` says which)."""

    def __init__(self, opened: OpenStream) -> None:
        self.opened = opened
        self.made: deque[Any] = deque()
        self.finished = False
        self.error: Exception | None = None
        self.making_since: float | None = None  # time.monotonic(), while in the generator
        self.ready = asyncio.Event()  # something was made, or the generator finished

    def start(self) -> None:
        raise NotImplementedError

    def give_credit(self, items: int) -> None:
        """``items`` made are in Redis now: as many more may be made."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Close the generator where it stands, unless it finished by itself."""
        raise NotImplementedError

    def take(self) -> list[Any]:
        """Everything made since the last take."""
        self.ready.clear()
        taken = list(self.made)
        for _ in taken:
            self.made.popleft()
        return taken


class ThreadProducer(Producer):
    """A plain generator, pulled on a handler thread of its own, in its call's context."""

    def __init__(self, opened: OpenStream, window: int, threads: HandlerThreads) -> None:
        super().__init__(opened)
        self.threads = threads
        self._credit = threading.Semaphore(window)
        self._stopping = False
        self._loop = asyncio.get_running_loop()
        self._signalled = False  # a wake-up is on its way to the loop
        self._running: asyncio.Future[Any] | None = None

    def start(self) -> None:
        context = self.opened.running_in
        self._running = asyncio.ensure_future(self.threads.run(lambda: context.run(self._make)))

    def _make(self) -> None:
        try:
            self._pull()
        except Exception as exc:  # from the generator's close: its finally raised
            logger.error(
                "closing %s raised %s: %s", self.opened.call.method, type(exc).__name__, exc
            )

    def _pull(self) -> None:
        generator = self.opened.generator
        while not self._stopping:
            if not self._credit.acquire(timeout=CANCEL_CHECK_SECONDS):
                continue
            if self._stopping:
                break
            self.making_since = time.monotonic()
            try:
                item = next(generator)
            except StopIteration:
                self._finish(None)
                return
            except Exception as exc:
                self._finish(exc)
                return
            finally:
                self.making_since = None
            self.made.append(item)
            self._wake()
        generator.close()

    def _finish(self, error: Exception | None) -> None:
        self.error, self.finished = error, True
        self._wake()

    def _wake(self) -> None:
        # One wake-up at a time: the pump clears the flag before it takes what was made.
        if not self._signalled and not self._stopping:
            self._signalled = True
            # A generator abandoned past its time limit may yield after the worker stopped.
            with contextlib.suppress(RuntimeError):  # the event loop is closed
                self._loop.call_soon_threadsafe(self.ready.set)

    def take(self) -> list[Any]:
        self._signalled = False
        return super().take()

    def give_credit(self, items: int) -> None:
        for _ in range(items):
            self._credit.release()

    async def stop(self) -> None:
        # Its thread closes the generator once it has it back; nothing waits for that.
        self._stopping = True
        self._credit.release()


class TaskProducer(Producer):
    """An async generator, pulled in a task of its own on the loop, in its call's context."""

    def __init__(self, opened: OpenStream, window: int) -> None:
        super().__init__(opened)
        self._credit = asyncio.Semaphore(window)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        # A task copies the context it is made in: the generator's, its call current.
        self._task = self.opened.running_in.run(asyncio.ensure_future, self._make())

    async def _make(self) -> None:
        generator = self.opened.generator
        while True:
            await self._credit.acquire()
            self.making_since = time.monotonic()
            try:
                item = await generator.__anext__()
            except StopAsyncIteration:
                break
            except Exception as exc:
                self.error = exc
                break
            finally:
                self.making_since = None
            self.made.append(item)
            self.ready.set()
        self.finished = True
        self.ready.set()

    def give_credit(self, items: int) -> None:
        for _ in range(items):
            self._credit.release()

    async def stop(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        closing = self.opened.running_in.run(asyncio.ensure_future, self.opened.generator.aclose())
        try:
            await closing
        except Exception as exc:
            logger.error(
                "closing %s raised %s: %s", self.opened.call.method, type(exc).__name__, exc
            )


# -- the pump ----------------------------------------------------------------------------


class StreamRun:
    """One stream, from its first item to its end."""

    def __init__(
        self,
        streaming: Streaming,
        opened: OpenStream,
        producer: Producer,
        reply_to: str,
        window: int,
    ) -> None:
        self.streaming = streaming
        self.opened = opened
        self.producer = producer
        self.reply_to = reply_to
        self.window = window
        self.request_id = opened.call.request_id
        self.name = f"{opened.call.service}.{opened.call.method}"
        # How long one item may take to make: the method's (or the worker's) time
        # limit, else the default time limit, as a call with no deadline of its own.
        handler = opened.handler
        self.limit = handler.limit if handler.limit is not None else handler.default_limit
        self.sent = 0  # items in the reply key (or already taken from it)
        self.length = 0  # the reply list's length, as last seen
        self.started = False  # a first push went in
        self._end: bytes | None = None  # the message that ends the stream, once made

    async def run(self) -> bool:
        self.producer.start()
        pending: list[bytes] = []
        ended = False
        try:
            while True:
                if not pending:
                    if self._end is not None:
                        ended = True
                        return True  # pushed, with everything before it
                    if not await self._wait_for_items():
                        return False
                    pending = self._messages()
                sent_before = self.sent
                pushed = await self._push(pending)
                if pushed is None:
                    return False
                self.producer.give_credit(self.sent - sent_before)
                pending = pending[pushed:]
                more = pending or self._end is None
                if more and self.length >= self.window and not await self._wait_for_room():
                    return False
        finally:
            if not ended:  # cancelled, or its caller gone: the middleware hears of it
                self.opened.handler.finished(
                    self.opened.call, {"items": self.sent, "cancelled": True}
                )
            if not self.producer.finished:
                await self.producer.stop()

    # -- the generator's side --------------------------------------------------------

    async def _wait_for_items(self) -> bool:
        """Wait until the producer has made something, or finished; False if the
        caller cancelled meanwhile. Past the time limit, the stream ends with
        TimeLimitExceeded (the generator is abandoned where it stands)."""
        producer = self.producer
        while not producer.made and not producer.finished:
            wait = CANCEL_CHECK_SECONDS
            since = producer.making_since
            if self.limit is not None and since is not None:
                wait = min(wait, max(since + self.limit - time.monotonic(), 0))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(producer.ready.wait(), wait)
            if producer.made or producer.finished:
                break
            since = producer.making_since
            if (
                self.limit is not None
                and since is not None
                and time.monotonic() - since >= self.limit
            ):
                logger.error("%s ran past its time limit of %ss", self.name, self.limit)
                self._end = self._failed(TimeLimitExceeded(data={"limit": self.limit}))
                return True
            if await self._push([]) is None:  # has the caller cancelled meanwhile?
                return False
        return True

    def _messages(self) -> list[bytes]:
        """The messages for what the producer made, then the end if it finished (or an
        item cannot be written as JSON, which ends the stream with an error after the
        items before it)."""
        if self._end is not None:  # past the time limit
            return [self._end]
        producer = self.producer
        finished = producer.finished  # read before taking: nothing is made after it
        messages: list[bytes] = []
        for item in producer.take():
            message = streams.item_message(self.request_id, item)
            if message is None:
                self._end = self._failed(streams.unserialisable_item(item))
                return [*messages, self._end]
            most = self.streaming.max_item_bytes
            if most is not None and len(message) > most:
                logger.error(
                    "%s streamed an item of %d bytes, over --max-reply-bytes (%d): the "
                    "stream ends with an error",
                    self.name,
                    len(message),
                    most,
                )
                self._end = self._failed(protocol.reply_too_large(len(message), most))
                return [*messages, self._end]
            messages.append(message)
        if finished and not producer.made:
            if producer.error is not None:
                self._end = self._failed(producer.error)
            else:
                items = self.sent + len(messages)
                self.opened.handler.finished(self.opened.call, {"items": items})
                self._end = streams.end_message(self.request_id, items)
            messages.append(self._end)
        return messages

    def _failed(self, error: Exception) -> bytes:
        rpc_error = self.opened.handler.failed(self.opened.call, error)
        return streams.error_message(self.request_id, rpc_error)

    # -- the reply key's side ----------------------------------------------------------

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
            logger.error(
                "stream %s to %s ended: Redis failed: %s", self.name, printable(self.reply_to), exc
            )
            return None
        pushed, self.length = int(answer[0]), int(answer[1])
        if pushed == CANCELLED:
            logger.debug("stream %s cancelled by its caller after %d items", self.name, self.sent)
            return None
        if pushed == KEY_TAKEN:
            logger.warning(
                "stream %s not started: its reply key %s already exists",
                self.name,
                printable(self.reply_to),
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
                    printable(self.reply_to),
                    self.sent,
                    self.streaming.reply_ttl_ms / 1000,
                )
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, LAST_POLL_DELAY)
            if await self._push([]) is None:
                return False
        return True
