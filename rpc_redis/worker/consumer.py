"""Durable events in the worker: each service's consumer group on each topic it handles.

A topic is a Redis Stream (``rpc:stream:{orders}``); a service consumes it through a
consumer group named after the service, so every service gets every event, and within
a service each event goes to one worker (a consumer: the worker's name). Each group is
read by ``concurrency`` lanes, threads with a connection each, as requests are
(``lanes.py``): a lane takes a new event (XREADGROUP ... COUNT n BLOCK ... >), runs a
plain handler right there (an ``async def`` one on the loop, and waits), and sends the
acknowledgement (XACK) in front of its next XREADGROUP, in one write. While its
handlers are quick, the same read brings up to ``event_prefetch`` more events already
waiting (it blocks only while there are none), so a burst costs a round trip per many
events, not per event: what a lane takes ahead (renewed as in flight from the moment
it is taken, as many as its handlers' pace lets wait a few milliseconds,
``event_handling.Pace``) goes to a list of the group's that every working lane takes
from before it reads (a lane in reserve that wakes to look takes none: it would run
beside the others, and a burst would hand the GIL over at every event). One lane
reads while its handlers are quick, and the others wait in reserve: once every
working lane has been in a handler for KEEPER_SECONDS, the keeper
(``event_handling.Keeper``) calls one more in, which takes what was taken ahead, then
reads; it goes back once it finds nothing. So a burst of quick events runs on one
thread, and a slow handler holds the others up no longer than that. One upkeep task on
the loop keeps the rest honest, every third of the visibility time:

- it renews the events this worker is handling (XCLAIM ... JUSTID resets their idle
  time), so that a long handler is never taken for a dead one;
- it claims, with ``lua/claim_events.lua``, the events left unacknowledged past the
  visibility time (their worker died, or their handler failed), with how often each
  has now been delivered (``current_call().delivery_count``), and handles them on the
  loop;
- now and then, it removes the consumers of gone workers that hold nothing
  (``lua/forget_consumers.lua``).

An event delivered ``max_deliveries`` times that fails again, or that comes once more
after that many deliveries without an acknowledgement (it kills its workers), goes to
the service's dead letters, and so does an entry that holds no readable event. The
dead letter is written before the acknowledgement, in one write but not atomically
(the stream and the dead-letter list are in different hash slots): a worker lost
between the two leaves the event to be delivered, and dead-lettered, again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.exceptions

from .. import protocol
from ..connection import (
    REDIS_ERRORS,
    AsyncRoutes,
    Redirect,
    read_responses_sync,
    redirect_of,
    send_commands_sync,
)
from ..connection.routes import BUSY_RETRY_SECONDS
from ..context import CallContext
from ..events import wire
from ..middleware import Hooks, run_hooks
from . import scripts
from .connections import ReceivingConnections
from .event_handling import (
    KEEPER_SECONDS,
    EventHandler,
    EventSlots,
    EventTasks,
    HeldSlot,
    Keeper,
    Pace,
)
from .outage import Outages
from .receiving import (
    READ_GRACE_SECONDS,
    REFUSAL_PAUSE_SECONDS,
    WRITE_RETRY_SECONDS,
    AfterFailure,
    Command,
    WriteRetry,
    raise_first_error,
)
from .writer import Writer

logger = logging.getLogger("rpc_redis.worker")

CLAIM_SCRIPT = scripts.load("claim_events")
FORGET_SCRIPT = scripts.load("forget_consumers")
CONSUMER_THREAD_PREFIX = "rpc-consumer"
# The upkeep removes consumers idle this many visibility times (and holding nothing)...
FORGET_AFTER_VISIBILITIES = 10
# ...and looks for them once in this many rounds.
FORGET_EVERY_ROUNDS = 10
# The most events one claim takes, whatever the free slots.
CLAIM_BATCH = 100
# A lane called in from the reserve blocks this long; finding nothing, it goes back.
RESERVE_BLOCK_SECONDS = 0.1
# How long a lane in reserve waits before it looks for a stop.
RESERVE_WAIT_SECONDS = 0.5


@dataclass
class Group:
    """One service's consumer group on one topic, as this worker reads it: its lanes
    below ``working`` read, the others wait in reserve (see ``Keeper``)."""

    service: str
    topic: str
    stream: str
    handler: EventHandler
    in_flight: dict[str, float] = field(default_factory=dict)  # entry id -> time.monotonic()
    working: int = 1
    busy_since: dict[int, float] = field(default_factory=dict)  # lane -> in a handler since
    handling: dict[int, str] = field(default_factory=dict)  # lane -> the entry it handles
    overdue: set[str] = field(default_factory=set)  # entries given up on: not renewed
    ahead: deque[wire.Entry] = field(default_factory=deque)  # taken, not started: under lock
    # Held directly (as EventSlots' lock is), waited on and notified through ``gate``.
    lock: threading.Lock = field(default_factory=threading.Lock)
    gate: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.gate = threading.Condition(self.lock)


@dataclass(frozen=True, slots=True)
class DeliveryRules:
    """When an event is taken for lost and when it is given up on: the worker's settings."""

    visibility: float
    max_deliveries: int
    dead_letter_limit: int
    max_message_bytes: int
    prefix: str


class Settling:
    """What settles one event beyond a plain acknowledgement: its dead letter first
    (``commands``), or a write of it that failed (``since``). A lane owes a plain
    acknowledgement as the bare entry (``Owed``), which a burst makes one of per event
    for nothing. The acknowledgements of a lane's events go together, in one XACK."""

    __slots__ = ("commands", "dead_letter_reason", "entry", "group", "since")

    def __init__(
        self,
        group: Group,
        entry: wire.Entry,
        commands: Sequence[Command] = (),
        dead_letter_reason: str | None = None,
    ) -> None:
        self.group = group
        self.entry = entry
        self.commands = commands
        self.dead_letter_reason = dead_letter_reason
        self.since: float | None = None  # when a write of it first failed

    @property
    def id(self) -> str:
        return self.entry.id


# What a lane owes Redis for an event it handled: an entry alone is its plain
# acknowledgement, not yet failed to be sent.
Owed = Settling | wire.Entry


def settling_commands(group: Group, owed: Sequence[Owed]) -> list[Command]:
    """The dead letters among them, then one XACK for all: each dead letter is written
    before its event is acknowledged."""
    if not owed:
        return []
    ack = ("XACK", group.stream, group.service, *[item.id for item in owed])
    return [command for item in owed if type(item) is Settling for command in item.commands] + [ack]


def retried(group: Group, owed: list[Owed], now: float) -> tuple[list[Owed], list[Settling]]:
    """After a write of ``owed`` failed (at ``now``): what goes again with the next
    write, each now a Settling that remembers when its writes began to fail, and what
    has failed for WRITE_RETRY_SECONDS already, given up on."""
    kept: list[Owed] = []
    given_up: list[Settling] = []
    for item in owed:
        settling = item if isinstance(item, Settling) else Settling(group, item)
        settling.since = settling.since or now
        (kept if settling.since >= now - WRITE_RETRY_SECONDS else given_up).append(settling)
    return kept, given_up


class Consumers:
    """A worker's durable-event receivers: lanes for each group, and their upkeep."""

    def __init__(
        self,
        groups: list[Group],
        routes: AsyncRoutes,
        writer: Writer,
        outages: Outages,
        connections: ReceivingConnections,
        slots: EventSlots,
        tasks: EventTasks,
        hooks: Hooks,
        rules: DeliveryRules,
        keeper: Keeper,
        *,
        consumer: str,
        lanes: int,
        prefetch: int,
        block_seconds: float,
    ) -> None:
        self.groups = groups
        self.routes = routes
        self.writer = writer
        self.outages = outages
        self.connections = connections
        self.slots = slots
        self.tasks = tasks
        self.hooks = hooks
        self.rules = rules
        self.keeper = keeper
        keeper.add(self._step_in)
        self.consumer = consumer  # this worker's name in every group
        self.lanes = lanes  # per group
        self.prefetch = prefetch
        self.block_seconds = block_seconds
        self.connected = asyncio.Event()  # every lane is connected, or met an outage
        self._unconnected = lanes * len(groups)
        self._unconnected_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> None:
        """Read every group until the worker stops; then finish the events being
        handled, and leave each group (if this worker holds nothing in it)."""
        loop = self._loop = asyncio.get_running_loop()
        upkeep_done = asyncio.Event()
        upkeep = asyncio.create_task(self._keep_up(upkeep_done))
        lanes = [(group, index) for group in self.groups for index in range(self.lanes)]
        waking = asyncio.create_task(self._wake_reserve_at_stop())
        try:
            with ThreadPoolExecutor(len(lanes), thread_name_prefix=CONSUMER_THREAD_PREFIX) as pool:
                await asyncio.gather(
                    *(loop.run_in_executor(pool, self._lane, *lane) for lane in lanes)
                )
        finally:
            waking.cancel()
            self.connected.set()
            upkeep_done.set()
            await upkeep
            await self.tasks.drain()
            await self._leave()

    # -- a lane: reading new events, handling them where they arrive ----------------------

    def _lane(self, group: Group, index: int) -> None:
        """Lane 0 always works; the others wait in reserve until the keeper calls them
        in (every working lane stuck in a handler), and go back once they find nothing."""
        # Every read of a lane waits at most a block: the socket's timeout bounds them.
        read_timeout = self.block_seconds + READ_GRACE_SECONDS
        # On a cluster, to the node serving the stream's hash slot.
        connection = self.connections.new_event_sync(read_timeout, group.stream)
        owed: list[Owed] = []  # to ride in front of the next read
        slot = HeldSlot(self.slots)  # across the events of one read
        try:
            self._connect(connection, group)
            self._lane_connected()
            pace = Pace(self.prefetch)
            # Looked up once: a burst goes round this loop once per event.
            stopping, watch, monotonic = self.outages.stopping, self.keeper.watch, time.monotonic
            next_event, handle, busy_since = self._next, self._handle_here, group.busy_since
            while not stopping.requested:
                try:
                    entry = next_event(connection, group, index, owed, pace, slot)
                except Redirected as redirected:
                    connection = self._follow(connection, group, redirected.redirect)
                    continue
                if entry is None:
                    continue
                started = monotonic()
                watch()
                settling = handle(group, index, entry, started, slot)
                if settling is not None:
                    owed.append(settling)
                pace.took(monotonic() - started)
                busy_since.pop(index, None)
                if index:
                    self._back_to_reserve(group, index, unless_needed=True)
            self._flush(connection, group, owed)
        finally:
            slot.give_back()
            connection.disconnect()  # type: ignore[no-untyped-call]

    def _connect(self, connection: redis.Connection, group: Group) -> None:
        with contextlib.suppress(*REDIS_ERRORS):  # the lane's reads meet the outage
            connection.connect()  # type: ignore[no-untyped-call]
            self._create_group(connection, group)

    def _follow(
        self, connection: redis.Connection, group: Group, redirect: Redirect
    ) -> redis.Connection:
        """The stream's slot is served elsewhere (MOVED): read there from now on. A
        slot being migrated (ASK) is waited out here, until it has moved."""
        if redirect.asking:
            time.sleep(BUSY_RETRY_SECONDS)
            return connection
        connection.disconnect()  # type: ignore[no-untyped-call]
        timeout = self.block_seconds + READ_GRACE_SECONDS
        moved = self.connections.following_event_sync(redirect, group.stream, timeout)
        self._connect(moved, group)
        return moved

    def _next(
        self,
        connection: redis.Connection,
        group: Group,
        index: int,
        owed: list[Owed],
        pace: Pace,
        slot: HeldSlot,
    ) -> wire.Entry | None:
        """The lane's next event: one taken ahead, else one read (while the lane
        works), the rest of the read taken ahead; None if there is none yet. The lane
        holds its slot only while it takes what was taken ahead."""
        with group.lock:
            working = index < group.working
            if working and group.ahead:  # a lane in reserve takes none: see _lane
                group.busy_since[index] = time.monotonic()
                return group.ahead.popleft()
        slot.give_back()
        if not working:
            self._flush(connection, group, owed)  # nothing waits on a lane in reserve
            with group.lock:
                if index >= group.working and not self.outages.stop_requested:
                    group.gate.wait(RESERVE_WAIT_SECONDS)
            return None
        block = self.block_seconds if index == 0 else RESERVE_BLOCK_SECONDS
        entries = self._read(connection, group, owed, pace.ahead(), block)
        if not entries:
            if entries is not None:
                self._back_to_reserve(group, index)
            return None
        taken = time.monotonic()
        for entry in entries:  # in flight, renewed, from now
            group.in_flight[entry.id] = taken
        with group.lock:
            group.ahead.extend(entries[1:])
            group.busy_since[index] = time.monotonic()
        return entries[0]

    def _back_to_reserve(self, group: Group, index: int, unless_needed: bool = False) -> None:
        """A called-in lane goes back once it finds nothing, or (``unless_needed``) once
        the lanes below it are no longer all stuck in a handler: the last called in first."""
        with group.lock:
            if not index or index != group.working - 1:
                return
            if unless_needed:
                cutoff = time.monotonic() - KEEPER_SECONDS
                busy = (group.busy_since.get(lane) for lane in range(index))
                if all(since is not None and since < cutoff for since in busy):
                    return
            group.working -= 1

    def _step_in(self, cutoff: float) -> bool:
        """The keeper's look: for each group whose working lanes have all been in a
        handler since before ``cutoff``, one more lane from the reserve; whether any
        lane is in a handler now."""
        busy = False
        for group in self.groups:
            self._give_up_overdue(group)
            with group.lock:
                since = [group.busy_since.get(index) for index in range(group.working)]
                busy = busy or bool(group.busy_since)
                stuck = all(started is not None and started < cutoff for started in since)
                if stuck and group.working < self.lanes:
                    group.working += 1
                    group.gate.notify_all()
        return busy

    def _give_up_overdue(self, group: Group) -> None:
        """A plain handler past its time limit on a lane cannot be cut short (a thread
        cannot be): its event is no longer renewed, so that it is claimed once the
        visibility time passes, and handled again (or dead-lettered after its
        deliveries); one log line says so. The keeper calls in another lane meanwhile."""
        limit = group.handler.watched_limit
        if limit is None:
            return
        cutoff = time.monotonic() - limit
        with group.lock:
            overdue = [
                (index, entry_id)
                for index, entry_id in group.handling.items()
                if entry_id not in group.overdue and group.busy_since.get(index, cutoff) < cutoff
            ]
            for _, entry_id in overdue:
                group.overdue.add(entry_id)
                group.in_flight.pop(entry_id, None)
        for _, entry_id in overdue:
            logger.error(
                "%s.%s ran past its time limit of %gs on event %s of %s: given up on, it "
                "will be claimed and handled again once the visibility time passes",
                group.service,
                group.handler.method.name,
                limit,
                entry_id,
                group.stream,
            )

    async def _wake_reserve_at_stop(self) -> None:
        await self.outages.stopping.event.wait()
        for group in self.groups:
            with group.lock:
                group.gate.notify_all()

    def _lane_connected(self) -> None:
        with self._unconnected_lock:
            self._unconnected -= 1
            last = self._unconnected == 0
        if last and self._loop is not None:
            self._loop.call_soon_threadsafe(self.connected.set)

    def _read(
        self,
        connection: redis.Connection,
        group: Group,
        owed: list[Owed],
        ahead: int,
        block: float,
    ) -> list[wire.Entry] | None:
        """Send what settles the lane's last events, then take one new event (waiting
        for one up to ``block`` seconds) and up to ``ahead`` more already waiting; None
        once the lane should stop."""
        # One read: it waits for a first event, and brings up to ``ahead`` more at
        # once if they are there already (a second, non-blocking read cost a command
        # and an answer to parse per read).
        reads = [self._read_command(group, 1 + ahead, block=block)]
        sending = settling_commands(group, owed)
        try:
            send_commands_sync(connection, [*sending, *reads])
            self._settled(group, owed, read_responses_sync(connection, len(sending), None))
            owed.clear()
            responses = read_responses_sync(connection, len(reads), None)
            redirect = next(filter(None, map(redirect_of, responses)), None)
            if redirect is not None:
                raise Redirected(redirect)
            if any(is_nogroup(response) for response in responses):
                self._create_group(connection, group, was_gone=True)
                return []
            raise_first_error(responses)
        except Redirected:
            raise
        except Exception as exc:
            self._keep_for_retry(group, owed)
            return [] if self._ride_out(exc, group) else None
        self.outages.note_refusal([group.stream], None)
        return [entry for response in responses for entry in wire.entries_read(response)]

    def _read_command(self, group: Group, count: int, *, block: float | None) -> Command:
        command: Command = ("XREADGROUP", "GROUP", group.service, self.consumer, "COUNT", count)
        if block is not None:
            command += ("BLOCK", max(int(block * 1000), 1))
        return (*command, "STREAMS", group.stream, ">")

    def _create_group(
        self, connection: redis.Connection, group: Group, was_gone: bool = False
    ) -> None:
        """Make the group, from the stream's oldest event (so that events emitted before
        any of the service's workers ran are handled), unless it exists."""
        command = ("XGROUP", "CREATE", group.stream, group.service, "0", "MKSTREAM")
        send_commands_sync(connection, [command])
        [response] = read_responses_sync(connection, 1, READ_GRACE_SECONDS)
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

    def _ride_out(self, error: Exception, group: Group) -> bool:
        """Ride out a failed read with the other receivers; False: stop reading."""
        if self.outages.stop_requested:
            return False
        action = self.outages.ride_out(error, [group.stream])
        if action is AfterFailure.STOP:
            return False
        if action is AfterFailure.PAUSE:
            return not self.outages.pause_from_thread(REFUSAL_PAUSE_SECONDS)
        return self.outages.wait_from_thread(error)

    def _handle_here(
        self, group: Group, index: int, entry: wire.Entry, now: float, slot: HeldSlot
    ) -> Owed | None:
        """Handle an event on this lane (from ``now``): what settles it (nothing, if it
        is to be retried, or if the worker stops first, which leaves it to be claimed).
        A burst runs through here once per event: it is kept lean."""
        triaged = self._triage(group, entry)
        in_flight = group.in_flight
        if isinstance(triaged, Settling):
            in_flight.pop(entry.id, None)
            return self._riding(triaged)
        if not (slot.held or slot.take()):
            in_flight.pop(entry.id, None)
            return None  # stopping: left pending, to be claimed
        in_flight[entry.id] = now
        group.handling[index] = entry.id
        try:
            assert self._loop is not None
            error = group.handler.run_here(triaged, self._loop)
        finally:
            del group.handling[index]
            if group.overdue:
                group.overdue.discard(entry.id)
            in_flight.pop(entry.id, None)
        if error is None:
            return entry  # its plain acknowledgement
        settling = self._after_run(group, entry, error)
        return None if settling is None else self._riding(settling)

    def _riding(self, settling: Settling) -> Settling | None:
        """What may ride with the lane's next read, on its connection to the stream's
        node. On a cluster a dead letter lies in another slot: it is written now,
        through the worker's writer, before its event is acknowledged; one that could
        not be written leaves its event pending, to be claimed and dead-lettered again."""
        if not settling.commands or not self.connections.is_cluster:
            return settling
        assert self._loop is not None
        writing = self.writer.write_with_others(list(settling.commands))
        try:
            results = asyncio.run_coroutine_threadsafe(writing, self._loop).result()
        except REDIS_ERRORS as exc:
            results = [exc]
        failure = next((r for r in results if isinstance(r, Exception)), None)
        if failure is not None:
            self._cannot_settle(settling.group, settling.id, str(failure))
            return None
        settling.commands = ()
        return settling

    def _settled(self, group: Group, owed: list[Owed], results: list[Any]) -> None:
        """Judge the answers to what was sent (``settling_commands``); the hooks hear
        of dead letters written."""
        if not owed:
            return
        acknowledged = results[-1]
        failed = isinstance(acknowledged, Exception)
        start = 0
        for item in owed:
            if type(item) is not Settling:  # a plain acknowledgement, most of them
                if failed:
                    self._cannot_settle(group, item.id, str(acknowledged))
                continue
            end = start + len(item.commands)
            if failed or end > start or item.dead_letter_reason is not None:
                self._judge(item, [*results[start:end], acknowledged])
            start = end

    def _keep_for_retry(self, group: Group, owed: list[Owed]) -> None:
        """After a lost connection: what was sent without an answer goes again with the
        next read, unless it has been retried past its time (then the event stays
        pending, to be claimed and handled again)."""
        kept, given_up = retried(group, owed, time.time())
        for settling in given_up:
            self._cannot_settle(group, settling.id, "Redis unreachable")
        owed[:] = kept

    def _flush(self, connection: redis.Connection, group: Group, owed: list[Owed]) -> None:
        """At stop: send what settles the lane's last events."""
        commands = settling_commands(group, owed)
        if not commands:
            return
        try:
            send_commands_sync(connection, commands)
            self._settled(group, owed, read_responses_sync(connection, len(commands), 10))
        except REDIS_ERRORS as exc:
            for item in owed:
                self._cannot_settle(group, item.id, str(exc))

    # -- what an event earns -------------------------------------------------------------

    def _triage(self, group: Group, entry: wire.Entry) -> CallContext | Settling:
        """The call to run for an event, or what settles it without running: an
        acknowledgement (another service's requeue), a dead letter."""
        if entry.target is not None and entry.target != group.service:
            return Settling(group, entry)  # acknowledged, unhandled
        if entry.raw is None:
            return self._dead_letter(group, entry, "stream entry has no event field")
        event = wire.decode_event(entry.raw, self.rules.max_message_bytes)
        if isinstance(event, str):
            return self._dead_letter(group, entry, event)
        if entry.delivery_count > self.rules.max_deliveries:
            return self._dead_letter(
                group,
                entry,
                f"delivered {entry.delivery_count} times without being acknowledged: "
                "its workers died, or stopped renewing it, while handling it",
            )
        return group.handler.call_for(event, group.topic, entry.delivery_count, entry.id)

    def _after_run(self, group: Group, entry: wire.Entry, error: Any) -> Settling | None:
        """After the handler: its acknowledgement, its dead letter, or nothing: a failed
        event stays pending, and is claimed again once the visibility time passes."""
        if error is None:
            return Settling(group, entry)
        if entry.delivery_count >= self.rules.max_deliveries:
            reason = f"failed {entry.delivery_count} times, the last with {error}"
            return self._dead_letter(group, entry, reason)
        return None

    def _dead_letter(self, group: Group, entry: wire.Entry, reason: str) -> Settling:
        """The event into its service's dead letters, then acknowledged (see the module);
        logged once, here, where it is decided."""
        key = protocol.dead_letter_key(group.service, self.rules.prefix)
        letter = wire.encode_event_dead_letter(
            entry.raw, reason, group.stream, group.service, entry, time.time()
        )
        commands: list[Command] = [
            ("RPUSH", key, letter),
            ("LTRIM", key, -self.rules.dead_letter_limit, -1),
        ]
        logger.warning(
            "dead-lettered event %s of %s for %s: %s", entry.id, group.stream, group.service, reason
        )
        return Settling(group, entry, commands, reason)

    def _judge(self, settling: Settling, results: list[Any]) -> None:
        failures = [result for result in results if isinstance(result, Exception)]
        if failures:
            self._cannot_settle(settling.group, settling.id, str(failures[0]))
        elif settling.dead_letter_reason is not None:
            run_hooks(
                self.hooks.after_dead_letter, settling.group.stream, settling.dead_letter_reason
            )

    def _cannot_settle(self, group: Group, entry_id: str, why: str) -> None:
        logger.error(
            "could not acknowledge event %s of %s for %s: %s",
            entry_id,
            group.stream,
            group.service,
            why,
        )

    # -- on the loop: claimed events -------------------------------------------------------

    async def _handle_on_loop(self, group: Group, entry: wire.Entry) -> None:
        """Handle a claimed event (holding a slot taken for it)."""
        triaged = self._triage(group, entry)
        if isinstance(triaged, CallContext):
            group.in_flight[entry.id] = time.monotonic()
            try:
                error = await group.handler.run(triaged)
            finally:
                group.in_flight.pop(entry.id, None)
            settling = self._after_run(group, entry, error)
        else:
            settling = triaged
        if settling is not None:
            await self._write(settling)

    async def _write(self, settling: Settling) -> None:
        """Write with the worker's other writes, retried through an outage."""
        retry = WriteRetry(None)
        commands = settling_commands(settling.group, [settling])
        while True:
            try:
                results = await self.writer.write_with_others(commands)
            except REDIS_ERRORS as exc:
                delay = retry.next_delay()
                if delay is None:
                    self._cannot_settle(settling.group, settling.id, str(exc))
                    return
                await asyncio.sleep(delay)
                continue
            self._judge(settling, results)
            return

    # -- upkeep --------------------------------------------------------------------------

    async def _keep_up(self, done: asyncio.Event) -> None:
        """Renew, claim and tidy every third of the visibility time until ``done``; an
        outage is only waited out (the lanes log it)."""
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
                        await self._forget(group, idle_ms, "")
                except (*REDIS_ERRORS, asyncio.TimeoutError):
                    pass

    async def _renew(self, group: Group, older_than: float) -> None:
        """Reset the idle time of the events this worker has handled for a while."""
        since = time.monotonic() - older_than
        ids = [entry_id for entry_id, started in list(group.in_flight.items()) if started < since]
        if ids:
            command = ("XCLAIM", group.stream, group.service, self.consumer, 0, *ids, "JUSTID")
            raise_first_error(await self.writer.write_with_others([command]))

    async def _claim_idle(self, group: Group) -> None:
        """Claim and handle the group's events left unacknowledged past the visibility time."""
        free = 0 if self.outages.stop_requested else self.slots.take_now(CLAIM_BATCH)
        if not free:
            return
        try:
            visibility_ms = int(self.rules.visibility * 1000)
            answer = await self._script(
                CLAIM_SCRIPT, group.stream, group.service, self.consumer, visibility_ms, free
            )
        except BaseException:
            self.slots.give_back(free)
            raise
        claimed, lost = answer
        self.slots.give_back(free - len(claimed))
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
            self.tasks.start(self._handle_on_loop(group, entry))

    async def _leave(self) -> None:
        """At a clean stop: remove this worker from each group it holds nothing in."""
        for group in self.groups:
            try:
                await asyncio.wait_for(
                    self._forget(group, 2**62, self.consumer), READ_GRACE_SECONDS
                )
            except (*REDIS_ERRORS, asyncio.TimeoutError):
                pass

    async def _forget(self, group: Group, idle_ms: int, consumer: str) -> None:
        await self._script(FORGET_SCRIPT, group.stream, group.service, idle_ms, consumer)

    async def _script(self, script: str, stream: str, *arguments: Any) -> Any:
        """Run one of the consumers' scripts on the stream's node; its answer."""
        command = ("EVAL", script, 1, stream, *arguments)
        [answer] = await self.routes.exchange([command], READ_GRACE_SECONDS)
        raise_first_error([answer])
        return answer


class Redirected(Exception):
    """A lane's read was answered MOVED or ASK: the stream's slot is served elsewhere."""

    def __init__(self, redirect: Redirect) -> None:
        super().__init__(redirect)
        self.redirect = redirect


def is_nogroup(response: Any) -> bool:
    """The group is gone (Redis lost its data, or someone deleted it)."""
    return isinstance(response, redis.exceptions.ResponseError) and str(response).startswith(
        "NOGROUP"
    )
