"""Pub/sub in the worker: one connection subscribed to every channel and pattern the
worker's services listen to, each message handed to every handler that wants it.

At most once, as Redis pub/sub is: a message reaches the workers subscribed when it is
published, and nobody else. A lost connection is waited out with the other receivers
(``Outages``); then the subscriber subscribes again by itself and says, in one line,
for how long it was not listening: what was published meanwhile is lost. A message
that is not an event (not JSON...) is one log line. Handlers run in tasks holding the
events' slots; while none is free, the subscriber stops reading, and Redis keeps the
messages for it, up to its ``client-output-buffer-limit pubsub`` (docs/events.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import redis.asyncio

from .. import protocol
from ..connection import REDIS_ERRORS, send_commands
from ..context import CallContext
from ..events import wire
from .connections import ReceivingConnections
from .event_handling import EventHandler, EventTasks
from .outage import Outages
from .receiving import READ_GRACE_SECONDS, REFUSAL_PAUSE_SECONDS, AfterFailure

logger = logging.getLogger("rpc_redis.worker")


class Subscriber:
    """A worker's pub/sub receiver: its channels, its patterns, and their handlers."""

    def __init__(
        self,
        channels: dict[str, list[EventHandler]],
        patterns: dict[str, list[EventHandler]],
        outages: Outages,
        connections: ReceivingConnections,
        tasks: EventTasks,
        *,
        prefix: str,
        max_message_bytes: int,
        block_seconds: float,
    ) -> None:
        """``channels`` and ``patterns``: the handlers of each, by event channel (or
        pattern) as the services named them."""
        self.by_channel = {wire.channel_name(name, prefix): list(h) for name, h in channels.items()}
        self.by_pattern = {
            wire.channel_pattern(pattern, prefix): list(h) for pattern, h in patterns.items()
        }
        self.outages = outages
        self.connections = connections
        self.tasks = tasks
        self.prefix = prefix
        self.max_message_bytes = max_message_bytes
        self.block_seconds = block_seconds
        self.connected = asyncio.Event()  # subscribed, or met an outage trying
        self._unsubscribed = asyncio.Event()

    @property
    def sources(self) -> list[str]:
        return [*self.by_channel, *self.by_pattern]

    async def run(self) -> None:
        """Subscribe and handle messages until the worker stops; then wait for the
        handlers running."""
        connection = self.connections.new()
        stopper = asyncio.create_task(self._unsubscribe_at_stop(connection))
        lost_since: float | None = None
        try:
            while not self.outages.stop_requested:
                try:
                    await self._subscribe(connection)
                    if lost_since is not None:
                        self._say_what_was_missed(lost_since)
                        lost_since = None
                    self.connected.set()
                    await self._receive(connection)
                except Exception as exc:
                    self.connected.set()
                    await connection.disconnect()
                    if self.outages.stop_requested:
                        break
                    lost_since = lost_since or time.time()
                    if not await self._after_failure(exc):
                        break
        finally:
            stopper.cancel()
            await connection.disconnect()
            await self.tasks.drain()

    async def _subscribe(self, connection: redis.asyncio.Connection) -> None:
        await connection.connect()  # type: ignore[no-untyped-call]
        commands = []
        if self.by_channel:
            commands.append(("SUBSCRIBE", *self.by_channel))
        if self.by_pattern:
            commands.append(("PSUBSCRIBE", *self.by_pattern))
        await send_commands(connection, commands)
        for _ in range(len(self.sources)):  # one confirmation per channel and pattern
            reply = await self._read(connection, READ_GRACE_SECONDS)
            if reply is None:
                raise TimeoutError("Redis did not confirm the subscriptions")

    async def _read(self, connection: redis.asyncio.Connection, timeout: float) -> object:
        return await connection.read_response(timeout=timeout, push_request=True)

    async def _receive(self, connection: redis.asyncio.Connection) -> None:
        """Read messages until the worker stops or the connection fails. A read that
        waits past its block sends a PING, and a second one finds Redis gone."""
        silent = 0
        while True:
            message = await self._read(connection, self.block_seconds)
            if message is None:
                if self.outages.stop_requested or self._unsubscribed.is_set():
                    return
                silent += 1
                if silent > 1:
                    raise TimeoutError(f"no answer from Redis to a PING in {self.block_seconds}s")
                await send_commands(connection, [("PING",)])
                continue
            silent = 0
            if not isinstance(message, list) or len(message) < 3:
                continue  # PONG, or a reply to something else
            kind = message[0]
            if kind == b"message":
                await self._handle(message[1], message[2], self.by_channel.get(_text(message[1])))
            elif kind == b"pmessage":
                await self._handle(message[2], message[3], self.by_pattern.get(_text(message[1])))
            elif kind in (b"unsubscribe", b"punsubscribe") and message[2] == 0:
                return  # the worker is stopping: every subscription is gone

    async def _handle(
        self, redis_channel: bytes, raw: bytes, handlers: Sequence[EventHandler] | None
    ) -> None:
        """Hand a message to each of its handlers, each when a slot is free."""
        channel = wire.event_channel(_text(redis_channel), self.prefix)
        event = wire.decode_event(raw, self.max_message_bytes)
        if isinstance(event, str):
            logger.warning("ignored a message on channel %s: %s", channel, event)
            return
        for handler in handlers or ():
            await self.tasks.slots.take(1)
            call = CallContext(
                handler.service,
                handler.method.name,
                [event.data],
                dict(event.meta),
                is_notification=True,
                event=channel,
            )
            self.tasks.start(handler.run(call))

    async def _after_failure(self, error: Exception) -> bool:
        """Ride out a lost subscription with the other receivers; False: stop."""
        action = self.outages.ride_out(error, self.sources)
        if action is AfterFailure.STOP:
            return False
        if action is AfterFailure.PAUSE:
            return not await self.outages.pause(REFUSAL_PAUSE_SECONDS)
        return await self.outages.wait(error)

    def _say_what_was_missed(self, lost_since: float) -> None:
        logger.warning(
            "subscribed again to %s after %.1fs without a subscription: whatever was "
            "published to them meanwhile is lost (pub/sub is at most once)",
            protocol.summarize(self.sources),
            time.time() - lost_since,
        )

    async def _unsubscribe_at_stop(self, connection: redis.asyncio.Connection) -> None:
        """At a stop, unsubscribe from everything: the reader sees the last confirmation
        and returns, without waiting out its block."""
        await self.outages.stopping.event.wait()
        self._unsubscribed.set()
        try:
            await send_commands(connection, [("UNSUBSCRIBE",), ("PUNSUBSCRIBE",)])
        except REDIS_ERRORS:
            pass  # not connected: the reader is riding out an outage, and sees the stop


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
