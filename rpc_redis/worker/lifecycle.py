"""The worker: pop a request, dispatch it, push the reply to its reply key.

Up to ``concurrency`` requests are in flight. A worker whose services have plain
functions receives on that many threads ("lanes", see ``lanes.py``), each serving one
request at a time without leaving its thread. Otherwise (services of ``async def``
methods only, or reliable queues) the event loop receives (``loop.py``), taking a
request only when a slot is free, so a busy worker leaves work on the queue for its
peers; there, ``async def`` handlers run on the loop and plain functions in a thread
pool. Bad messages get an error reply or a dead-letter entry and one log line;
nothing kills the loop.

This module builds the parts and runs them: the receivers are handed what they need
(``Serving``, ``Outages``, ``ReceivingConnections``), never the worker itself.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .. import protocol
from ..connection import AsyncRoutes, resolve
from ..metrics import PrometheusMetrics, recording_for_others
from ..middleware import Hooks, Middleware
from ..service import Service
from .connections import ReceivingConnections
from .dispatch import Dispatcher, DispatchOptions
from .events import EventReceivers, event_sources
from .handling import Handling, WorkerStats
from .lanes import Lanes
from .loop import LoopReceivers
from .outage import Outages, Stopping
from .receiving import AfterFailure, after_receive_failure, receiving_block, slot_groups
from .registry import Presence, Upkeep
from .reliable import Reliability
from .serving import Serving
from .settings import WorkerSettings
from .streamer import Streaming
from .threads import HandlerThreads
from .writer import Writer

logger = logging.getLogger("rpc_redis.worker")

# Bound on the worker's occasional commands (PING, heartbeats, CLIENT UNBLOCK).
ADMIN_TIMEOUT = 10.0
HOST = socket.gethostname()

__all__ = ["Worker", "WorkerStats"]


class Worker:
    """Serves one or more :class:`Service` objects from their Redis lists.

    Settings are given by name (``Worker(service, url, concurrency=4)``) or as one
    :class:`WorkerSettings`; ``middleware`` runs around every call, after the
    worker's own counters (``stats``). Redis is a URL of any form docs/deployment.md
    lists, or ``redis=``: a ``redis.asyncio.Redis``, ``RedisCluster`` or pool you built
    (the worker's event loop uses it as it is; its receiving connections, one per
    receiver, are made with the same settings).
    """

    def __init__(
        self,
        services: Service | Sequence[Service],
        redis_url: str | None = None,
        *,
        redis: Any = None,
        settings: WorkerSettings | None = None,
        middleware: Sequence[Middleware] = (),
        **options: Any,
    ) -> None:
        if settings is not None and options:
            raise TypeError("give a WorkerSettings or settings by name, not both")
        self.settings = settings if settings is not None else WorkerSettings(**options)
        services = [services] if isinstance(services, Service) else list(services)
        if not services:
            raise ValueError("a worker needs at least one service")
        queue, prefix = self.settings.queue, self.settings.prefix
        if queue is not None and len(services) != 1:
            raise ValueError("a queue name can be given only when serving one service")
        self.services = services
        self.target = resolve(redis_url, redis)
        self.redis_url = self.target.location.url
        self.name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # A service of event handlers only serves its queue too: the library's own
        # methods (rpc.discover, rpc.ping) answer for it there.
        self.by_queue = {queue or service.queue_key(prefix): service for service in services}
        self.event_services = [service for service in services if service.handles_events]
        # Reliable queues: requests move into an in-progress list until answered.
        self.reliable_queues = {
            queue: service.name
            for queue, service in self.by_queue.items()
            if self.settings.reliable or service.reliable
        }
        self.uses_lanes = self._receives_in_threads()
        self.stats = WorkerStats()
        self.metrics = (
            PrometheusMetrics({queue: service.name for queue, service in self.by_queue.items()})
            if self.settings.metrics_port is not None
            else None
        )
        own = [self.stats] if self.metrics is None else [self.stats, self.metrics]
        self.hooks = Hooks([*own, *middleware])
        self.handler_threads = HandlerThreads(self.settings.concurrency)
        self.dispatch_options = dispatch_options = DispatchOptions(
            debug=self.settings.debug,
            time_limit=self.settings.time_limit,
            default_time_limit=self.settings.default_time_limit,
            threads=self.handler_threads,
            worker=self.name,
        )
        self.dispatchers = {
            queue: Dispatcher(service, dispatch_options, self.hooks)
            for queue, service in self.by_queue.items()
        }
        self.handling = Handling(
            {queue: service.name for queue, service in self.by_queue.items()},
            self.hooks,
            prefix=prefix,
            max_message_bytes=self.settings.max_message_bytes,
            max_batch=self.settings.max_batch,
            max_reply_bytes=self.settings.max_reply_bytes,
            reply_ttl_ms=self.settings.reply_ttl_ms,
            dead_letter_limit=self.settings.dead_letter_limit,
        )
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self.stopping = Stopping(self.settings.drain_timeout)
        self._busy_receivers: Lanes | None = None
        self._serving: Serving | None = None
        self._events: EventReceivers | None = None
        self.started: float | None = None  # when run() began, for the registry

    def _receives_in_threads(self) -> bool:
        """Lanes serve plain functions on their own threads; reliable queues (BLMOVE into
        in-progress lists, acknowledged in transactions) are received on the loop."""
        wanted = self.settings.receive_in_threads
        if wanted and self.reliable_queues:
            raise ValueError("reliable queues are received on the event loop, not in threads")
        if wanted is None:
            return not self.reliable_queues and any(
                service.has_plain_functions for service in self.services
            )
        return wanted

    def __repr__(self) -> str:
        return f"Worker({protocol.summarize(self.by_queue)}, concurrency={self.concurrency})"

    @property
    def concurrency(self) -> int:
        return self.settings.concurrency

    @property
    def reply_ttl_ms(self) -> int:
        return self.settings.reply_ttl_ms

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until :meth:`stop`; then finish the requests in flight and return.

        Raises :class:`~rpc_redis.errors.RpcConfigurationError` if Redis will not serve
        the worker as configured (credentials, ACL, database), after finishing what it
        had taken.
        """
        loop = asyncio.get_running_loop()
        self.stopping.bind(loop)
        self.started = time.time()
        stop_serving_metrics = self._serve_metrics()
        routes = self.target.async_routes(
            shared=True,
            max_connections=self.concurrency + 4,
            # No socket timeout: it would wrap every send in a task (redis-py); every
            # read here passes its own timeout instead. No retries of redis-py's own
            # (seconds of backoff, past the admin timeout): outages.py has its own.
            socket_timeout=None,
            retry=Retry(NoBackoff(), 0),
        )
        metrics = self.metrics
        outages = Outages(
            routes,
            self.target.where,
            self.stopping,
            ADMIN_TIMEOUT,
            loop,
            on_reconnect=metrics.reconnected if metrics is not None else None,
        )
        reliability = Reliability(
            routes,
            self.name,
            self.reliable_queues,
            prefix=self.settings.prefix,
            heartbeat_interval=self.settings.heartbeat_interval,
            max_deliveries=self.settings.max_deliveries,
            dead_letter_limit=self.settings.dead_letter_limit,
        )
        presence = Presence(
            routes,
            self.name,
            prefix=self.settings.prefix,
            heartbeat_interval=self.settings.heartbeat_interval,
            describe=self.registry_entry,
            served=self.stats.served,
        )
        upkeep_steps: list[Upkeep] = []
        if self.reliable_queues:
            upkeep_steps += [reliability.beat, reliability.recover_dead_workers]
        if metrics is not None:
            dead_letter_keys = {
                service.name: protocol.dead_letter_key(service.name, self.settings.prefix)
                for service in self.services
            }
            upkeep_steps.append(functools.partial(metrics.sample, routes, dead_letter_keys))
        writer = Writer(routes)
        streaming = Streaming(
            writer,
            reply_ttl_ms=self.settings.reply_ttl_ms,
            threads=self.handler_threads,
            max_item_bytes=self.settings.max_reply_bytes,
        )
        serving = Serving(self.handling, self.dispatchers, writer, reliability, loop, streaming)
        self._serving = serving
        connections = ReceivingConnections(
            self.target, routes, f"rpc-worker-{self.name}", ADMIN_TIMEOUT
        )
        if self.event_services:
            self._events = EventReceivers(
                self.event_services,
                self.dispatch_options,
                self.hooks,
                self.settings,
                worker_name=self.name,
                routes=routes,
                writer=writer,
                outages=outages,
                connections=connections,
            )
        receiving_done = asyncio.Event()
        unblocker = asyncio.create_task(self._unblock_at_stop(connections, receiving_done))
        upkeep_done = asyncio.Event()
        upkeep: asyncio.Task[None] | None = None
        try:
            if await outages.wait():
                if await self._first_beat(presence, reliability, outages):
                    upkeep = asyncio.create_task(
                        presence.keep_up(ADMIN_TIMEOUT, upkeep_done, upkeep_steps)
                    )
                await self._receive(serving, outages, connections, routes)
        finally:
            receiving_done.set()
            await unblocker
            await self._drain(serving)
            if upkeep is not None:
                upkeep_done.set()
                await upkeep
                await self._retire(presence, reliability)
            await routes.disconnect()
            await connections.disconnect()
            await self.target.aclose()
            self.handler_threads.shutdown()
            if stop_serving_metrics is not None:
                stop_serving_metrics()
            self.stopped.set()
        if self.stopping.fatal is not None:
            raise self.stopping.fatal

    async def _drain(self, serving: Serving) -> None:
        """Wait for the requests in flight until the drain timeout, then abandon those
        left, named in one line: in reliable mode they stay in progress, and retiring
        puts them back on their queue."""
        left = self.stopping.drain_left()
        abandoned = list(self._busy_receivers.abandoned) if self._busy_receivers else []
        abandoned += await serving.drain(self.settings.drain_timeout if left is None else left)
        if abandoned:
            recovered = "; they stay in progress, to be recovered" if self.reliable_queues else ""
            logger.warning(
                "stopping: abandoned %d request(s) still running after the drain timeout of "
                "%gs: %s%s",
                len(abandoned),
                self.settings.drain_timeout,
                protocol.summarize(abandoned),
                recovered,
            )

    def _serve_metrics(self) -> Callable[[], None] | None:
        """Serve the metrics, unless another process serves them (``--processes``)."""
        if self.metrics is None or recording_for_others():
            return None
        port = self.settings.metrics_port
        assert port is not None
        return self.metrics.serve(self.settings.metrics_host, port)

    async def _first_beat(
        self, presence: Presence, reliability: Reliability, outages: Outages
    ) -> bool:
        """Register before receiving (a reliable worker's queue heartbeats first, so that
        no peer finds its entry without them); False if Redis refuses it for good."""
        try:
            if self.reliable_queues:
                await asyncio.wait_for(reliability.beat(), ADMIN_TIMEOUT)
            await asyncio.wait_for(presence.beat(), ADMIN_TIMEOUT)
        except Exception as exc:
            return outages.ride_out(exc, list(self.by_queue)) is not AfterFailure.STOP
        return True

    async def _retire(self, presence: Presence, reliability: Reliability) -> None:
        """Leave the registry; a reliable worker then requeues what it still holds."""
        try:
            await asyncio.wait_for(presence.retire(), ADMIN_TIMEOUT)
            if self.reliable_queues:
                await asyncio.wait_for(reliability.retire(), ADMIN_TIMEOUT)
        except Exception as exc:
            if after_receive_failure(exc) is None:
                raise
            logger.warning("could not retire from the worker registry: %s", exc)

    async def _receive(
        self,
        serving: Serving,
        outages: Outages,
        connections: ReceivingConnections,
        routes: AsyncRoutes,
    ) -> None:
        """Receive until stopped: requests in lanes (threads) or on the event loop, and
        events beside them. The startup line and :attr:`ready` wait for the receiving
        connections to be up, so that "ready" means receiving (a failed one meets its
        outage in its receive loop)."""
        receivers: list[Lanes | LoopReceivers | EventReceivers] = []
        if self.by_queue:
            receivers.append(self._request_receivers(serving, outages, connections, routes))
        if self._events is not None:
            receivers.append(self._events)
        receiving: asyncio.Future[Any] = asyncio.gather(*(each.run() for each in receivers))
        connected: asyncio.Future[Any] = asyncio.gather(
            *(each.connected.wait() for each in receivers)
        )
        try:
            await asyncio.wait({receiving, connected}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            receiving.cancel()  # as it would be if awaited
            raise
        finally:
            connected.cancel()
        if all(each.connected.is_set() for each in receivers) and not self.stopping.requested:
            logger.info("%s", self.describe())
            self.ready.set()
        await receiving

    def _request_receivers(
        self,
        serving: Serving,
        outages: Outages,
        connections: ReceivingConnections,
        routes: AsyncRoutes,
    ) -> Lanes | LoopReceivers:
        settings = self.settings
        plain_queues = [queue for queue in self.by_queue if queue not in self.reliable_queues]
        # One BLPOP waits on all queues of a node, or on those of one slot of a cluster.
        plain_groups = slot_groups(plain_queues, routes.slot) if plain_queues else []
        block_seconds = receiving_block(settings.block_seconds, routes.is_cluster)
        if self.uses_lanes:
            self._busy_receivers = Lanes(
                serving,
                outages,
                connections,
                plain_groups,
                count=settings.concurrency,
                prefetch=settings.prefetch,
                block_seconds=block_seconds,
                stats=self.stats,
                routes=routes,
            )
            return self._busy_receivers
        # BLMOVE takes one source list: a receiver for each reliable queue.
        groups = [[queue] for queue in self.reliable_queues] + plain_groups
        return LoopReceivers(
            serving,
            outages,
            connections,
            groups,
            concurrency=settings.concurrency,
            block_seconds=block_seconds,
        )

    def stop(self) -> None:
        """Stop taking requests; in-flight ones finish. Safe from any thread or signal handler."""
        self.stopping.request()

    async def _unblock_at_stop(
        self,
        connections: ReceivingConnections,
        receiving_done: asyncio.Event,
    ) -> None:
        """At a stop: say so, and cut the receivers' blocking pops short until they return."""
        stop = asyncio.ensure_future(self.stopping.event.wait())
        done = asyncio.ensure_future(receiving_done.wait())
        await asyncio.wait({stop, done}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        done.cancel()
        if not self.stopping.requested:
            return
        if self.stopping.fatal is None:  # a fatal error is said once, by whoever runs us
            logger.info("stopping: finishing %d request(s) in flight", self.in_flight)
        await connections.unblock_until(receiving_done)

    @property
    def in_flight(self) -> int:
        """Requests being served now, in threads and on the event loop."""
        lanes = self._busy_receivers.busy if self._busy_receivers is not None else 0
        on_loop = self._serving.in_flight if self._serving is not None else 0
        events = self._events.in_flight if self._events is not None else 0
        return lanes + on_loop + events

    def registry_entry(self) -> dict[str, Any]:
        """What the worker registry says of this worker (``registry.py``), as of now."""
        return {
            "host": HOST,
            "pid": os.getpid(),
            "started": round(self.started or time.time(), 3),
            "queues": {queue: service.name for queue, service in self.by_queue.items()},
            "reliable": sorted(self.reliable_queues),
            "concurrency": self.concurrency,
            "receiving": "threads" if self.uses_lanes else "loop",
            "in_flight": self.in_flight,
        }

    def describe(self) -> str:
        """The startup line: what is served, from where, how."""
        served = "; ".join(
            [
                *(
                    f"{service.name} [{protocol.summarize(sorted(service.methods))}] from {queue}"
                    for queue, service in self.by_queue.items()
                ),
                *(
                    f"{service.name} events on [{protocol.summarize(event_sources(service))}]"
                    for service in self.event_services
                ),
            ]
        )
        reliable = f", reliable: {', '.join(self.reliable_queues)}" if self.reliable_queues else ""
        where = (
            f"in threads, prefetch {self.settings.prefetch}"
            if self.uses_lanes
            else "on the event loop"
        )
        return (
            f"rpc-worker serving {served} on {self.target.where} "
            f"(concurrency {self.concurrency} {where}, pid {os.getpid()}{reliable})"
        )

    @property
    def busy_handler_threads(self) -> int:
        """Threads running a plain-function handler now: after a stop, those past a
        limit or a deadline, and those abandoned at the drain timeout."""
        lanes = self._busy_receivers.abandoned_running if self._busy_receivers else 0
        return self.handler_threads.busy + lanes
