"""The worker's event receivers, beside its request receivers: a subscriber for the
services' pub/sub handlers (``subscriber.py``) and consumers for their durable ones
(``consumer.py``), built from the services and handed what they need, sharing the
events' slots (``event_handling.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import redis.asyncio

from ..events import wire
from ..middleware import Hooks
from ..service import Service
from .connections import ReceivingConnections
from .consumer import Consumers, DeliveryRules, Group
from .dispatch import Dispatcher, DispatchOptions
from .event_handling import EventHandler, EventTasks
from .loop import Slots
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
        client: redis.asyncio.Redis,
        writer: Writer,
        outages: Outages,
        connections: ReceivingConnections,
    ) -> None:
        tasks = EventTasks(Slots(settings.concurrency))
        channels: dict[str, list[EventHandler]] = {}
        patterns: dict[str, list[EventHandler]] = {}
        groups: list[Group] = []
        for service in services:
            dispatcher = Dispatcher(service, options, hooks)
            for subscription in service.subscriptions:
                handler = EventHandler(
                    service.name,
                    subscription.handler,
                    dispatcher.event_handler(subscription.handler),
                )
                if subscription.channel is not None:
                    channels.setdefault(subscription.channel, []).append(handler)
                else:
                    assert subscription.pattern is not None
                    patterns.setdefault(subscription.pattern, []).append(handler)
            for topic, consumer in service.consumers.items():
                handler = EventHandler(
                    service.name, consumer.handler, dispatcher.event_handler(consumer.handler)
                )
                stream = wire.stream_key(topic, settings.prefix)
                groups.append(Group(service.name, topic, stream, handler))
        self.receivers: list[Subscriber | Consumers] = []
        if channels or patterns:
            self.receivers.append(
                Subscriber(
                    channels,
                    patterns,
                    outages,
                    connections,
                    tasks,
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
                    client,
                    writer,
                    outages,
                    connections,
                    tasks,
                    hooks,
                    rules,
                    consumer=worker_name,
                    concurrency=settings.concurrency,
                    block_seconds=settings.block_seconds,
                )
            )
        self.tasks = tasks
        self.connected = asyncio.Event()  # every receiver is connected, or met an outage

    @property
    def in_flight(self) -> int:
        return len(self.tasks)

    async def run(self) -> None:
        watching = asyncio.create_task(self._watch_connected())
        try:
            await asyncio.gather(*(receiver.run() for receiver in self.receivers))
        finally:
            watching.cancel()

    async def _watch_connected(self) -> None:
        await asyncio.gather(*(receiver.connected.wait() for receiver in self.receivers))
        self.connected.set()


def event_sources(service: Service) -> list[str]:
    """What a service's event handlers listen to, for the worker's startup line."""
    subscribed = [item.channel or f"{item.pattern} (pattern)" for item in service.subscriptions]
    return [*subscribed, *(f"{topic} (durable)" for topic in service.consumers)]
