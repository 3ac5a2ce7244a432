"""The worker's event receivers, beside its request receivers: a subscriber for the
services' pub/sub handlers (``subscriber.py``) and consumers for their durable ones
(``consumer.py``), built from the services and handed what they need, sharing the
events' slots (``event_handling.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ..connection import AsyncRoutes
from ..events import wire
from ..middleware import Hooks
from ..service import Method, Service
from .connections import ReceivingConnections
from .consumer import Consumers, DeliveryRules, Group
from .dispatch import Dispatcher, DispatchOptions
from .event_handling import EventHandler, EventSlots, EventTasks, Keeper
from .outage import Outages
from .settings import WorkerSettings
from .subscriber import Subscriber
from .writer import Writer


class EventReceivers:
    """The receivers a worker's services need for their events, run together."""

    def __init__(
        self,
        services: Sequence[Service],
        options: DispatchOptions,
        hooks: Hooks,
        settings: WorkerSettings,
        *,
        worker_name: str,
        routes: AsyncRoutes,
        writer: Writer,
        outages: Outages,
        connections: ReceivingConnections,
    ) -> None:
        self.slots = slots = EventSlots(settings.concurrency)
        self.tasks = tasks = EventTasks(slots)
        self.keeper = keeper = Keeper()
        self.outages = outages
        channels: dict[str, list[EventHandler]] = {}
        patterns: dict[str, list[EventHandler]] = {}
        groups: list[Group] = []
        for service in services:
            dispatcher = Dispatcher(service, options, hooks)
            for subscription in service.subscriptions:
                handler = event_handler(dispatcher, subscription.handler)
                if subscription.channel is not None:
                    channels.setdefault(subscription.channel, []).append(handler)
                else:
                    assert subscription.pattern is not None
                    patterns.setdefault(subscription.pattern, []).append(handler)
            for topic, consumer in service.consumers.items():
                stream = wire.stream_key(topic, settings.prefix)
                handler = event_handler(dispatcher, consumer.handler)
                groups.append(Group(service.name, topic, stream, handler))
        self.receivers: list[Subscriber | Consumers] = []
        if channels or patterns:
            self.receivers.append(
                Subscriber(
                    channels,
                    patterns,
                    outages,
                    connections,
                    slots,
                    tasks,
                    keeper,
                    threads=settings.concurrency,
                    prefetch=settings.event_prefetch,
                    prefix=settings.prefix,
                    max_message_bytes=settings.max_message_bytes,
                    block_seconds=settings.block_seconds,
                )
            )
        if groups:
            rules = DeliveryRules(
                settings.event_visibility,
                settings.max_deliveries,
                settings.dead_letter_limit,
                settings.max_message_bytes,
                settings.prefix,
            )
            self.receivers.append(
                Consumers(
                    groups,
                    routes,
                    writer,
                    outages,
                    connections,
                    slots,
                    tasks,
                    hooks,
                    rules,
                    keeper,
                    consumer=worker_name,
                    lanes=settings.concurrency,
                    prefetch=settings.event_prefetch,
                    block_seconds=settings.block_seconds,
                )
            )
        self.connected = asyncio.Event()  # every receiver is connected, or met an outage

    @property
    def in_flight(self) -> int:
        """Events being handled: those holding a slot."""
        return self.slots.taken

    async def run(self) -> None:
        watching = asyncio.create_task(self._watch_connected())
        closing = asyncio.create_task(self._close_slots_at_stop())
        keeper_done = asyncio.Event()
        keeping = asyncio.create_task(self.keeper.run(keeper_done))
        try:
            await asyncio.gather(*(receiver.run() for receiver in self.receivers))
        finally:
            watching.cancel()
            closing.cancel()
            keeper_done.set()
            await keeping

    async def _watch_connected(self) -> None:
        await asyncio.gather(*(receiver.connected.wait() for receiver in self.receivers))
        self.connected.set()

    async def _close_slots_at_stop(self) -> None:
        """At a stop, a thread waiting for a slot gives up: its pub/sub message is
        dropped (at most once), its durable event left pending, to be claimed."""
        await self.outages.stopping.event.wait()
        self.slots.close()
        for receiver in self.receivers:
            if isinstance(receiver, Subscriber):
                receiver.wake_all()


def event_handler(dispatcher: Dispatcher, method: Method) -> EventHandler:
    return EventHandler(dispatcher.service.name, method, *dispatcher.event_handler(method))


def event_sources(service: Service) -> list[str]:
    """What a service's event handlers listen to, for the worker's startup line."""
    subscribed = [item.channel or f"{item.pattern} (pattern)" for item in service.subscriptions]
    return [*subscribed, *(f"{topic} (durable)" for topic in service.consumers)]
