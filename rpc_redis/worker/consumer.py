"""Durable events in the worker: each service's consumer group on each topic it handles.

A topic is a Redis Stream (``rpc:stream:{orders}``); a service consumes it through a
consumer group named after the service, so every service gets every event, and within
a service each event goes to one worker (a consumer: the worker's name). A reader per
group takes new events (XREADGROUP ... >) as the events' slots allow; each is
acknowledged (XACK) once its handler returns. One upkeep task keeps the rest honest,
every third of the visibility time:

- it renews the events this worker is handling (XCLAIM ... JUSTID resets their idle
  time), so that a long handler is never taken for a dead one;
- it claims, with ``lua/claim_events.lua``, the events left unacknowledged past the
  visibility time (their worker died, or their handler failed), with how often each
  has now been delivered (``current_call().delivery_count``);
- now and then, it removes the consumers of gone workers that hold nothing
  (``lua/forget_consumers.lua``).

An event delivered ``max_deliveries`` times that fails again, or that comes once more
after that many deliveries without an acknowledgement (it kills its workers), goes to
the service's dead letters, and so does an entry that holds no readable event. The
dead letter is written before the acknowledgement, in one round trip but not atomically
(the stream and the dead-letter list are in different hash slots): a worker lost
between the two leaves the event to be delivered, and dead-lettered, again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import redis.asyncio
import redis.exceptions

from .. import protocol
from ..connection import REDIS_ERRORS, exchange
from ..context import CallContext
from ..events import wire
from ..middleware import Hooks, run_hooks
from .connections import ReceivingConnections
from .event_handling import EventHandler, EventTasks
from .outage import Outages
from .receiving import (
    READ_GRACE_SECONDS,
    REFUSAL_PAUSE_SECONDS,
    AfterFailure,
    Command,
    WriteRetry,
    raise_first_error,
)
from .writer import Writer

logger = logging.getLogger("rpc_redis.worker")

CLAIM_SCRIPT = (resources.files(__package__) / "lua" / "claim_events.lua").read_text()
FORGET_SCRIPT = (resources.files(__package__) / "lua" / "forget_consumers.lua").read_text()
# The upkeep removes consumers idle this many visibility times (and holding nothing)...
FORGET_AFTER_VISIBILITIES = 10
# ...and looks for them once in this many rounds.
FORGET_EVERY_ROUNDS = 10
# The most events one claim takes, whatever the free slots.
CLAIM_BATCH = 100


@dataclass
class Group:
    """One service's consumer group on one topic, as this worker reads it."""

    service: str
    topic: str
    stream: str
    handler: EventHandler
    in_flight: dict[str, float] = field(default_factory=dict)  # entry id -> time.monotonic()


@dataclass(frozen=True, slots=True)
class DeliveryRules:
    """When an event is taken for lost and when it is given up on: the worker's settings."""

    visibility: float
    max_deliveries: int
    dead_letter_limit: int
    max_message_bytes: int
    prefix: str


class Consumers:
    """A worker's durable-event receivers: a reader per group, and their upkeep."""

    def __init__(
        self,
        groups: list[Group],
        client: redis.asyncio.Redis,
        writer: Writer,
        outages: Outages,
        connections: ReceivingConnections,
        tasks: EventTasks,
        hooks: Hooks,
        rules: DeliveryRules,
        *,
        consumer: str,
        concurrency: int,
        block_seconds: float,
    ) -> None:
        self.groups = groups
        self.client = client
        self.writer = writer
        self.outages = outages
        self.connections = connections
        self.tasks = tasks
        self.hooks = hooks
        self.rules = rules
        self.consumer = consumer  # this worker's name in every group
        self.concurrency = concurrency
        self.block_seconds = block_seconds
        self.connected = asyncio.Event()  # every reader is connected, or met an outage
        self._unconnected = len(groups)
        self._claim = client.register_script(CLAIM_SCRIPT)
        self._forget = client.register_script(FORGET_SCRIPT)

    async def run(self) -> None:
        """Read every group until the worker stops; then finish the events being
        handled, and leave each group (if this worker holds nothing in it)."""
        upkeep_done = asyncio.Event()
        upkeep = asyncio.create_task(self._keep_up(upkeep_done))
        try:
            await asyncio.gather(*(self._read(group) for group in self.groups))
        finally:
            upkeep_done.set()
            await upkeep
            await self.tasks.drain()
            await self._leave()

    # -- reading new events ------------------------------------------------------------

    async def _read(self, group: Group) -> None:
        connection = self.connections.new()
        try:
            with contextlib.suppress(*REDIS_ERRORS):  # the loop below meets the outage
                await connection.connect()  # type: ignore[no-untyped-call]
                await self._create_group(connection, group)
            self._reader_connected()
            slots = self.tasks.slots
            while not self.outages.stop_requested:
                # Blocked, a reader holds one slot; once events come, it takes more.
                taken = await slots.take(1)
                if self.outages.stop_requested:
                    slots.give_back(taken)
                    break
                try:
                    entries = await self._take(connection, group, taken, block=True)
                    if entries:
                        more = slots.take_now(self.concurrency)
                        taken += more
                        entries += await self._take(connection, group, more, block=False)
                except Exception as exc:
                    slots.give_back(taken)
                    if not await self._after_failure(exc, group):
                        break
                    continue
                self.outages.note_refusal([group.stream], None)
                slots.give_back(taken - len(entries))
                for entry in entries:
                    self.tasks.start(self._handle(group, entry))
        finally:
            await connection.disconnect()

    def _reader_connected(self) -> None:
        self._unconnected -= 1
        if self._unconnected == 0:
            self.connected.set()

    async def _take(
        self, connection: redis.asyncio.Connection, group: Group, count: int, *, block: bool
    ) -> list[wire.Entry]:
        """Up to ``count`` new events of the group; blocking, waits for one."""
        if not count:
            return []
        command: Command = ("XREADGROUP", "GROUP", group.service, self.consumer, "COUNT", count)
        if block:
            command += ("BLOCK", int(self.block_seconds * 1000))
        command += ("STREAMS", group.stream, ">")
        [response] = await exchange(connection, [command], self.block_seconds + READ_GRACE_SECONDS)
        if isinstance(response, redis.exceptions.ResponseError) and str(response).startswith(
            "NOGROUP"
        ):
            await self._create_group(connection, group, was_gone=True)
            return []
        raise_first_error([response])
        return wire.entries_read(response)

    async def _create_group(
        self, connection: redis.asyncio.Connection, group: Group, was_gone: bool = False
    ) -> None:
        """Make the group, from the stream's oldest event (so that events emitted before
        any of the service's workers ran are handled), unless it exists."""
        command = ("XGROUP", "CREATE", group.stream, group.service, "0", "MKSTREAM")
        [response] = await exchange(connection, [command], READ_GRACE_SECONDS)
        if isinstance(response, redis.exceptions.ResponseError):
            if str(response).startswith("BUSYGROUP"):
                return
            raise response
        if was_gone:
            logger.warning(
                "the consumer group %s of %s was gone (Redis lost its data, or someone "
                "deleted it): made it again, from the stream's oldest event",
                group.service,
                group.stream,
            )
        else:
            logger.info("made the consumer group %s of %s", group.service, group.stream)

    async def _after_failure(self, error: Exception, group: Group) -> bool:
        """Ride out a failed read with the other receivers; False: stop reading."""
        action = self.outages.ride_out(error, [group.stream])
        if action is AfterFailure.STOP:
            return False
        if action is AfterFailure.PAUSE:
            return not await self.outages.pause(REFUSAL_PAUSE_SECONDS)
        return not self.outages.stop_requested and await self.outages.wait(error)

    # -- handling one event --------------------------------------------------------------

    async def _handle(self, group: Group, entry: wire.Entry) -> None:
        """Run the handler; acknowledge the event, leave it for a retry, or dead-letter it."""
        if entry.target is not None and entry.target != group.service:
            await self._write(group, entry, [self._ack(group, entry)])  # another's requeue
            return
        if entry.raw is None:
            await self._dead_letter(group, entry, "stream entry has no event field")
            return
        event = wire.decode_event(entry.raw, self.rules.max_message_bytes)
        if isinstance(event, str):
            await self._dead_letter(group, entry, event)
            return
        if entry.delivery_count > self.rules.max_deliveries:
            await self._dead_letter(
                group,
                entry,
                f"delivered {entry.delivery_count} times without being acknowledged: "
                "its workers died, or stopped renewing it, while handling it",
            )
            return
        call = CallContext(
            group.service,
            group.handler.method.name,
            [event.data],
            dict(event.meta),
            is_notification=True,
            event=group.topic,
            delivery_count=entry.delivery_count,
            event_id=entry.id,
        )
        group.in_flight[entry.id] = time.monotonic()
        try:
            error = await group.handler.run(call)
        finally:
            group.in_flight.pop(entry.id, None)
        if error is None:
            await self._write(group, entry, [self._ack(group, entry)])
        elif entry.delivery_count >= self.rules.max_deliveries:
            await self._dead_letter(
                group, entry, f"failed {entry.delivery_count} times, the last with {error}"
            )
        # Otherwise it stays pending, and is claimed again once the visibility time passes.

    def _ack(self, group: Group, entry: wire.Entry) -> Command:
        return ("XACK", group.stream, group.service, entry.id)

    async def _dead_letter(self, group: Group, entry: wire.Entry, reason: str) -> None:
        """The event into its service's dead letters, then acknowledged (see the module)."""
        key = protocol.dead_letter_key(group.service, self.rules.prefix)
        letter = wire.encode_event_dead_letter(
            entry.raw, reason, group.stream, group.service, entry, time.time()
        )
        commands: list[Command] = [
            ("RPUSH", key, letter),
            ("LTRIM", key, -self.rules.dead_letter_limit, -1),
            self._ack(group, entry),
        ]
        logger.warning(
            "dead-lettered event %s of %s for %s: %s", entry.id, group.stream, group.service, reason
        )
        if await self._write(group, entry, commands):
            run_hooks(self.hooks.after_dead_letter, group.stream, reason)

    async def _write(self, group: Group, entry: wire.Entry, commands: list[Command]) -> bool:
        """Write with the worker's other writes, retried through an outage; True once done.
        If it cannot be, the event stays pending, to be claimed and handled again."""
        retry = WriteRetry(None)
        while True:
            try:
                results = await self.writer.write_with_others(commands)
                raise_first_error(results)
                return True
            except redis.exceptions.ResponseError as exc:
                failure: Exception = exc
            except REDIS_ERRORS as exc:
                delay = retry.next_delay()
                if delay is not None:
                    await asyncio.sleep(delay)
                    continue
                failure = exc
            logger.error(
                "could not acknowledge event %s of %s for %s: %s",
                entry.id,
                group.stream,
                group.service,
                failure,
            )
            return False

    # -- upkeep --------------------------------------------------------------------------

    async def _keep_up(self, done: asyncio.Event) -> None:
        """Renew, claim and tidy every third of the visibility time until ``done``; an
        outage is only waited out (the readers log it)."""
        interval = self.rules.visibility / 3
        rounds = 0
        while not done.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), interval)
            if done.is_set():
                return
            rounds += 1
            for group in self.groups:
                try:
                    await asyncio.wait_for(self._renew(group, interval), READ_GRACE_SECONDS)
                    await asyncio.wait_for(self._claim_idle(group), READ_GRACE_SECONDS)
                    if rounds % FORGET_EVERY_ROUNDS == 0:
                        idle_ms = int(self.rules.visibility * FORGET_AFTER_VISIBILITIES * 1000)
                        await self._forget(keys=[group.stream], args=[group.service, idle_ms, ""])
                except (*REDIS_ERRORS, asyncio.TimeoutError):
                    pass

    async def _renew(self, group: Group, older_than: float) -> None:
        """Reset the idle time of the events this worker has handled for a while."""
        since = time.monotonic() - older_than
        ids = [entry_id for entry_id, started in group.in_flight.items() if started < since]
        if ids:
            command = ("XCLAIM", group.stream, group.service, self.consumer, 0, *ids, "JUSTID")
            raise_first_error(await self.writer.write_with_others([command]))

    async def _claim_idle(self, group: Group) -> None:
        """Claim and handle the group's events left unacknowledged past the visibility time."""
        slots = self.tasks.slots
        free = 0 if self.outages.stop_requested else slots.take_now(CLAIM_BATCH)
        if not free:
            return
        try:
            visibility_ms = int(self.rules.visibility * 1000)
            answer: Any = await self._claim(
                keys=[group.stream], args=[group.service, self.consumer, visibility_ms, free]
            )
        except BaseException:
            slots.give_back(free)
            raise
        claimed, lost = answer
        slots.give_back(free - len(claimed))
        if lost:
            logger.warning(
                "%d event(s) of %s were trimmed from the stream (MAXLEN) before %s handled "
                "them: they are lost",
                len(lost),
                group.stream,
                group.service,
            )
        for entry_id, fields, deliveries in claimed:
            entry = wire.entry_from_fields(entry_id, fields, int(deliveries))
            self.tasks.start(self._handle(group, entry))

    async def _leave(self) -> None:
        """At a clean stop: remove this worker from each group it holds nothing in."""
        for group in self.groups:
            try:
                await asyncio.wait_for(
                    self._forget(keys=[group.stream], args=[group.service, 2**62, self.consumer]),
                    READ_GRACE_SECONDS,
                )
            except (*REDIS_ERRORS, asyncio.TimeoutError):
                pass
