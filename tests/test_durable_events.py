"""Durable events against real Redis and real rpc-worker processes: every service gets
every event, one worker of a service handles each, a killed worker's event is handled
again, a poison event is dead-lettered and requeued for its service alone, events wait
for workers, and a Redis restart loses only what the docs say it may."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from typing import Any

import pytest
import redis

from rpc_redis import (
    AsyncClient,
    CallContext,
    Client,
    Middleware,
    RpcConnectionError,
    Service,
    current_call,
)
from rpc_redis import admin as rpc_admin
from rpc_redis.embedded import EmbeddedRedis
from rpc_redis.events import wire
from rpc_redis.testing import serve_in_thread, wait_until
from tests import event_service
from tests.event_service import handled
from tests.test_pubsub import BURST, MOST_THREADS_IN_A_BURST, Seen, event_worker

STREAM = "rpc:stream:{orders}"
VISIBILITY = "0.5"


@pytest.fixture
def workers() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.fixture
def recording(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """tests.event_service records in this test's Redis, in this process too."""
    monkeypatch.setenv("RPC_REDIS_URL", redis_url)
    event_service._store = None
    yield redis_url
    if event_service._store is not None:
        event_service._store.close()
    event_service._store = None


def order_ids(entries: list[dict[str, Any]]) -> list[int]:
    return sorted(entry["order"]["id"] for entry in entries)


def test_two_services_each_get_every_event_once_while_two_workers_of_one_split_them(
    redis_url: str, redis_connection: redis.Redis, workers: ExitStack
) -> None:
    redis_connection.set("test:slow:billing", 0.02)
    options = ("--concurrency", "1", "--event-visibility", "5")
    billers = [
        workers.enter_context(event_worker(redis_url, "tests.event_service:billing", *options))
        for _ in range(2)
    ]
    workers.enter_context(event_worker(redis_url, "tests.event_service:shipping", *options))
    with Client(redis_url) as client:
        ids = [client.emit("orders", {"id": number}) for number in range(20)]
    assert len(set(ids)) == 20
    wait_until(lambda: len(handled(redis_connection, "billing")) == 20, what="all billed")
    wait_until(lambda: len(handled(redis_connection, "shipping")) == 20, what="all shipped")
    billed = handled(redis_connection, "billing")
    assert order_ids(billed) == list(range(20))  # each once
    assert order_ids(handled(redis_connection, "shipping")) == list(range(20))
    assert {entry["pid"] for entry in billed} == {biller.pid for biller in billers}
    assert {entry["delivery"] for entry in billed} == {1}
    wait_until(lambda: not any(g["pending"] for g in redis_connection.xinfo_groups(STREAM)))


def test_a_worker_killed_mid_event_has_it_handled_again_by_another(
    redis_url: str, redis_connection: redis.Redis, workers: ExitStack
) -> None:
    options = ("--event-visibility", VISIBILITY)
    first = workers.enter_context(event_worker(redis_url, "tests.event_service:billing", *options))
    second = workers.enter_context(event_worker(redis_url, "tests.event_service:billing", *options))
    with Client(redis_url) as client:
        client.emit("orders", {"id": 1, "hold": True})
    wait_until(lambda: redis_connection.get("test:holding:1") is not None)
    holder = int(redis_connection.get("test:holding:1") or 0)
    survivor = second if holder == first.pid else first
    os.kill(holder, signal.SIGKILL)
    wait_until(lambda: len(handled(redis_connection, "billing")) == 2, what="handled again")
    first_time, second_time = handled(redis_connection, "billing")
    assert (first_time["pid"], first_time["delivery"]) == (holder, 1)
    assert (second_time["pid"], second_time["delivery"]) == (survivor.pid, 2)
    wait_until(lambda: redis_connection.xinfo_groups(STREAM)[0]["pending"] == 0)
    assert survivor.stop() == 0


def test_a_poison_event_is_dead_lettered_after_n_deliveries_and_requeued_for_its_service_alone(
    recording: str, redis_connection: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    services = [event_service.billing, event_service.shipping]
    redis_connection.set("test:broken:billing", 1)
    options: dict[str, Any] = {"max_deliveries": 2, "event_visibility": 0.3}
    with serve_in_thread(services, recording, **options), Client(recording) as client:
        event_id = client.emit("orders", {"id": 7})
        wait_until(lambda: redis_connection.llen("rpc:dead:{billing}") == 1, what="dead letter")
        [letter] = rpc_admin.list_dead_letters(redis_connection, "billing")
        assert letter.members["id"] == event_id
        assert letter.members["deliveries"] == 2
        assert letter.queue == STREAM  # what `rpc-admin dead list` shows
        assert letter.reason == (
            "failed 2 times, the last with [-32603] Internal error: "
            "{'type': 'ValueError', 'message': 'billing is broken'}"
        )
        assert [entry["delivery"] for entry in handled(redis_connection, "billing")] == [1, 2]
        redis_connection.delete("test:broken:billing")
        status = rpc_admin.main(["dead", "requeue", "billing", "--redis-url", recording])
        assert (status, capsys.readouterr().out) == (
            0,
            "requeued 1 message from rpc:dead:{billing}; 0 left\n",
        )
        wait_until(lambda: len(handled(redis_connection, "billing")) == 3, what="handled again")
        wait_until(lambda: not any(g["pending"] for g in redis_connection.xinfo_groups(STREAM)))
        assert len(handled(redis_connection, "shipping")) == 1  # the requeue was billing's
        requeued = redis_connection.xrange(STREAM)[-1][1]
        assert requeued[b"for"] == b"billing"
    assert order_ids(handled(redis_connection, "billing")) == [7, 7, 7]


def test_events_emitted_while_no_worker_runs_are_handled_when_one_starts(
    recording: str, redis_connection: redis.Redis
) -> None:
    with Client(recording) as client:
        for number in range(3):
            client.emit("orders", {"id": number})  # before any worker ever ran
        with serve_in_thread(event_service.billing, recording):
            wait_until(lambda: len(handled(redis_connection, "billing")) == 3)
        for number in range(3, 5):
            client.emit("orders", {"id": number})  # while the service's worker is stopped
    consumers = redis_connection.xinfo_consumers(STREAM, "billing")
    assert consumers == []  # a worker that stops cleanly leaves its group
    with serve_in_thread(event_service.billing, recording):
        wait_until(lambda: len(handled(redis_connection, "billing")) == 5)
    assert order_ids(handled(redis_connection, "billing")) == [0, 1, 2, 3, 4]


def xreadgroup_calls(connection: redis.Redis) -> int:
    return int(connection.info("commandstats").get("cmdstat_xreadgroup", {}).get("calls", 0))


@pytest.mark.parametrize("event_prefetch", [63, 0])
def test_a_waiting_burst_is_read_many_events_at_a_time_or_one_by_one(
    redis_url: str, redis_connection: redis.Redis, event_prefetch: int
) -> None:
    """A burst of quick events costs a read per up to 64 (the floor's count), not per
    event; with ``event_prefetch=0`` it is read one event at a time. The pace lets a
    handler's events wait 5 ms: a quick one's, 32 at least even on a loaded machine."""
    service = Service("tally")
    seen: list[int] = []
    all_seen = threading.Event()

    @service.on("orders")
    def tally(order: dict[str, int]) -> None:
        seen.append(order["id"])
        if len(seen) == 200:
            all_seen.set()

    with Client(redis_url) as client:
        for number in range(200):
            client.emit("orders", {"id": number})
    before = xreadgroup_calls(redis_connection)
    with serve_in_thread(service, redis_url, concurrency=1, event_prefetch=event_prefetch):
        assert all_seen.wait(30)
        reads = xreadgroup_calls(redis_connection) - before
    assert seen == list(range(200))
    if event_prefetch:
        assert reads <= 200 // 32 + 2  # and the lane's last read, which waits
    else:
        assert reads >= 200


def test_a_burst_of_quick_events_runs_on_one_lane(redis_url: str) -> None:
    """The working lane handles what it took ahead; the lanes in reserve, which wake
    every half second to look, take none of it (they would run beside it, handing the
    GIL over at every event)."""
    service = Service("burst")
    threads: list[int] = []
    all_handled = threading.Event()

    @service.on("orders")
    def handle(order: dict[str, int]) -> None:
        time.sleep(0.0003)
        threads.append(threading.get_ident())
        if len(threads) == BURST:
            all_handled.set()

    with Client(redis_url) as client:
        for number in range(BURST):
            client.emit("orders", {"id": number})
    with serve_in_thread(service, redis_url, concurrency=8):
        assert all_handled.wait(30)
    assert len(set(threads)) <= MOST_THREADS_IN_A_BURST


@pytest.mark.parametrize("bursting", ["durable", "pub/sub"])
def test_a_receiving_thread_holds_its_slot_across_a_burst_and_no_longer(
    redis_url: str, bursting: str
) -> None:
    """With one slot for every event source, the thread draining a burst (a durable
    lane, or pub/sub's turn holder) holds it from one event to the next, and gives it
    back before it reads again: an event of the other kind sent after the burst is
    handled, and so is the next burst."""
    service = Service("one_slot")
    burst: list[int] = []
    after: list[int] = []
    burst_handled, after_handled = threading.Event(), threading.Event()

    def take_burst(number: int) -> None:
        if number >= 0:  # not the one that found the subscription up
            burst.append(number)
            if len(burst) % 300 == 0:
                burst_handled.set()

    def take_after(number: int) -> None:
        if number >= 0:
            after.append(number)
            after_handled.set()

    durable, published = (
        (take_burst, take_after) if bursting == "durable" else (take_after, take_burst)
    )
    service.on("orders")(durable)
    service.subscribe("news")(published)
    with Client(redis_url) as client, serve_in_thread(service, redis_url, concurrency=1):
        send = {
            "durable": partial(client.emit, "orders"),
            "pub/sub": partial(client.publish, "news"),
        }
        other = "pub/sub" if bursting == "durable" else "durable"
        wait_until(lambda: client.publish("news", -1) == 1)  # subscribed
        for round_number in range(2):
            burst_handled.clear()
            after_handled.clear()
            for number in range(300):
                send[bursting](number)
            assert burst_handled.wait(30)
            send[other](round_number)
            assert after_handled.wait(10)
    assert burst == list(range(300)) * 2
    assert after == [0, 1]


def test_acknowledgements_that_could_not_be_written_are_retried_for_a_while() -> None:
    """A lane owes plain acknowledgements as bare entries; once a write of them fails,
    each remembers since when, and is given up on (its event stays pending, to be
    claimed) WRITE_RETRY_SECONDS later."""
    from rpc_redis.worker.consumer import Group, Settling, retried, settling_commands
    from rpc_redis.worker.receiving import WRITE_RETRY_SECONDS

    group = Group("svc", "orders", STREAM, handler=None)  # type: ignore[arg-type]
    plain = wire.Entry("1-0", b"{}")
    letter = Settling(group, wire.Entry("2-0", b"x"), [("RPUSH", "dead", "x")], "poison")
    owed: list[Any] = [plain, letter]
    assert settling_commands(group, owed) == [
        ("RPUSH", "dead", "x"),
        ("XACK", STREAM, "svc", "1-0", "2-0"),
    ]
    kept, given_up = retried(group, owed, 1000.0)
    assert given_up == [] and [item.id for item in kept] == ["1-0", "2-0"]
    assert all(isinstance(item, Settling) and item.since == 1000.0 for item in kept)
    later = wire.Entry("3-0", b"{}")  # handled during the outage, from what was read ahead
    kept, given_up = retried(group, [*kept, later], 1000.0 + WRITE_RETRY_SECONDS / 2)
    assert given_up == [] and [item.id for item in kept] == ["1-0", "2-0", "3-0"]
    kept, given_up = retried(group, kept, 1000.0 + WRITE_RETRY_SECONDS + 0.1)
    assert [item.id for item in given_up] == ["1-0", "2-0"]
    assert [item.id for item in kept] == ["3-0"]
    assert settling_commands(group, kept) == [("XACK", STREAM, "svc", "3-0")]


def test_a_long_handler_is_renewed_not_handed_to_another_worker(redis_url: str) -> None:
    service = Service("patient")
    seen = Seen()

    @service.on("long")
    def take_your_time(data: Any) -> None:
        call = current_call()
        assert call is not None
        seen.add((data, call.delivery_count))
        time.sleep(1.2)  # four visibility times

    options: dict[str, Any] = {"event_visibility": 0.3}
    with (
        serve_in_thread(service, redis_url, **options),
        serve_in_thread(service, redis_url, **options),
        Client(redis_url) as client,
    ):
        client.emit("long", "job")
        seen.wait_for(1)
        # Acknowledged once its handler returned, after four visibility times: in which
        # another worker would have claimed it (and been seen to), had it not been renewed.
        with redis.Redis.from_url(redis_url) as connection:
            stream = wire.stream_key("long")
            wait_until(
                lambda: connection.xpending(stream, "patient")["pending"] == 0,
                5,
                "the event acknowledged",
            )
    assert seen.items == [("job", 1)]


def test_an_event_that_killed_its_workers_is_dead_lettered_without_running_again(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    service = Service("victim")
    seen = Seen()

    @service.on("deadly")
    def handle(data: Any) -> None:
        seen.add(data)

    stream = "rpc:stream:{deadly}"
    event_id = redis_connection.xadd(stream, {"event": b'{"v":1,"data":"poison"}'})
    redis_connection.xgroup_create(stream, "victim", "0")
    # Delivered three times to workers that died without acknowledging it.
    redis_connection.xreadgroup("victim", "dead-worker", {stream: ">"})
    redis_connection.execute_command(
        "XCLAIM", stream, "victim", "dead-worker", 0, event_id, "IDLE", 60000, "RETRYCOUNT", 3
    )
    with serve_in_thread(service, redis_url, max_deliveries=3, event_visibility=0.3):
        wait_until(lambda: redis_connection.llen("rpc:dead:{victim}") == 1)
        [letter] = rpc_admin.list_dead_letters(redis_connection, "victim")
        assert letter.reason.startswith("delivered 4 times without being acknowledged")
        wait_until(lambda: redis_connection.xinfo_groups(stream)[0]["pending"] == 0)
    assert seen.items == []


def test_entries_that_hold_no_readable_event_are_dead_lettered_at_once(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    service = Service("picky")
    seen = Seen()

    @service.on("mixed")
    def handle(data: Any) -> None:
        seen.add(data)

    stream = "rpc:stream:{mixed}"
    with serve_in_thread(service, redis_url), Client(redis_url) as client:
        redis_connection.xadd(stream, {"other": "field"})
        redis_connection.xadd(stream, {"event": "not json"})
        redis_connection.xadd(stream, {"event": '{"plain": "json"}'})  # a bare event is fine
        client.emit("mixed", "fine")
        seen.wait_for(2)
        wait_until(lambda: redis_connection.llen("rpc:dead:{picky}") == 2)
    reasons = [letter.reason for letter in rpc_admin.list_dead_letters(redis_connection, "picky")]
    assert reasons[0] == "stream entry has no event field"
    assert reasons[1].startswith("not valid JSON")
    assert seen.items == [{"plain": "json"}, "fine"]


def test_a_failed_event_is_retried_and_the_handler_sees_how_often_it_came(
    redis_url: str,
) -> None:
    service = Service("flaky")
    seen = Seen()

    @service.on("jobs")
    def handle(data: Any) -> None:
        call = current_call()
        assert call is not None
        seen.add((call.delivery_count, call.event, call.event_id is not None))
        if call.delivery_count == 1:
            raise RuntimeError("first time unlucky")

    with serve_in_thread(service, redis_url, event_visibility=0.3), Client(redis_url) as c:
        c.emit("jobs", "x")
        seen.wait_for(2)
    assert seen.items == [(1, "jobs", True), (2, "jobs", True)]


class Meta(Middleware):
    def before_send(self, call: CallContext) -> None:
        call.meta["tenant"] = "acme"


def test_an_emit_carries_the_middleware_meta_and_bounds_its_stream(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    service = Service("tenants")
    seen = Seen()

    @service.on("audit")
    def handle(data: Any) -> None:
        call = current_call()
        assert call is not None
        seen.add((data, call.meta))

    async def emit() -> str:
        async with AsyncClient(redis_url, middleware=[Meta()]) as client:
            return await client.emit("audit", {"n": 1})

    with serve_in_thread(service, redis_url):
        assert "-" in (event_id := __import__("asyncio").run(emit()))
        seen.wait_for(1)
    assert seen.items == [({"n": 1}, {"tenant": "acme"})]
    assert redis_connection.xrange("rpc:stream:{audit}")[0][0].decode() == event_id
    with Client(redis_url) as client:
        for number in range(1000):
            client.emit("bounded", number, maxlen=100)
    # MAXLEN ~ trims whole nodes of 100 entries: at least 100 are kept, not many more.
    assert 100 <= redis_connection.xlen("rpc:stream:{bounded}") < 300


def test_a_redis_restart_under_publishes_and_emits_loses_only_what_the_docs_say(
    workers: ExitStack,
) -> None:
    """With Redis persisting every write (appendfsync always), a restart loses no
    emitted event whose emit returned. A published message that reached a subscriber is
    handled, but for the last ones before the crash: Redis may answer the publisher and
    die before it has written them to the subscriber's socket. The rest failed at the
    caller, or went to no subscriber (publish returned 0), as docs/events.md says."""
    server = workers.enter_context(
        EmbeddedRedis(extra_args=("--appendonly", "yes", "--appendfsync", "always"))
    )
    services = ("tests.event_service:listener", "tests.event_service:billing")
    worker = workers.enter_context(
        event_worker(server.url, *services, "--event-visibility", VISIBILITY)
    )
    published: dict[int, int] = {}  # number -> subscribers that received it
    emitted: list[int] = []
    failed = {"publish": 0, "emit": 0}
    first_failure: list[int] = []
    stop = threading.Event()

    def keep_sending() -> None:
        with Client(server.url, timeout=1) as client:
            number = 0
            while not stop.is_set():
                number += 1
                try:
                    published[number] = client.publish("news", number)
                except RpcConnectionError:
                    failed["publish"] += 1
                    first_failure.append(number)
                try:
                    client.emit("orders", {"id": number})
                    emitted.append(number)
                except RpcConnectionError:
                    failed["emit"] += 1
                    first_failure.append(number)
                time.sleep(0.002)

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        wait_until(lambda: len(emitted) > 50)
        server.kill()
        wait_until(lambda: failed["emit"] > 0, what="emits failing while Redis is down")
        server.start()
        worker.wait_for_line("subscribed again to rpc:channel:news", 15)
        # Counted from the resubscription: what was sent before it, while Redis came
        # back, may have reached nobody (a machine under load takes longer to get here).
        resubscribed = len(emitted)
        wait_until(lambda: len(emitted) > resubscribed + 100)
    finally:
        stop.set()
        sender.join(10)
    with redis.Redis.from_url(server.url) as connection:
        wait_until(
            lambda: set(emitted) <= set(order_ids(handled(connection, "billing"))),
            15,
            "every emitted event handled",
        )
        received = connection.lrange("test:news", 0, -1)
    handled_news = {int(__import__("json").loads(raw)["data"]) for raw in received}
    reached = {number for number, subscribers in published.items() if subscribers}
    crash = first_failure[0]
    assert reached - handled_news <= {crash - 2, crash - 1, crash}, (crash, worker.lines)
    assert len(reached & handled_news) > 100
    assert worker.stop() == 0


def test_a_plain_handler_past_the_default_time_limit_is_given_up_and_claimed_again(
    redis_url: str, redis_connection: redis.Redis, workers: ExitStack
) -> None:
    """An event has no caller's deadline: the worker's --default-time-limit bounds its
    plain handler, run on the lane that took it. A thread cannot be cut short, so past
    the limit the event is no longer renewed, said in one line, and handled again once
    its visibility time has passed."""
    redis_connection.set("test:slow:billing", 1.5)
    options = ("--default-time-limit", "0.3", "--event-visibility", VISIBILITY)
    worker = workers.enter_context(event_worker(redis_url, "tests.event_service:billing", *options))
    with Client(redis_url) as client:
        event_id = client.emit("orders", {"id": 1})
    worker.wait_for_line(f"ran past its time limit of 0.3s on event {event_id}", 10)
    wait_until(
        lambda: [entry["delivery"] for entry in handled(redis_connection, "billing")][:2] == [1, 2],
        10,
        "the event handled again, as its second delivery",
    )
    line = next(line for line in worker.lines if "ran past its time limit" in line)
    assert "billing.bill" in line and STREAM in line


def test_a_keeper_whose_look_fails_says_so_once_and_looks_again_when_asked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The keeper looks from a thread of its own; a look that raises (a bug) is one
    log line, and the keeper looks again the next time a thread starts handling."""
    import asyncio

    from rpc_redis.worker.event_handling import Keeper

    keeper = Keeper()
    looks: list[float] = []

    def step_in(cutoff: float) -> bool:
        looks.append(cutoff)
        if len(looks) == 1:
            raise RuntimeError("a bug in a receiver")
        return False

    keeper.add(step_in)

    async def watched_twice() -> None:
        done = asyncio.Event()
        keeping = asyncio.create_task(keeper.run(done))
        await asyncio.sleep(0)  # its thread started
        keeper.watch()
        await asyncio.to_thread(wait_until, lambda: len(looks) >= 2)
        keeper.watch()
        await asyncio.to_thread(wait_until, lambda: len(looks) >= 4)
        done.set()
        await keeping

    with caplog.at_level("ERROR", logger="rpc_redis.worker"):
        asyncio.run(watched_twice())
    failed = [r for r in caplog.records if "keeper failed" in r.getMessage()]
    assert len(failed) == 1 and "a bug in a receiver" in (failed[0].exc_text or "")
    # A look after KEEPER_SECONDS, then a last one for anyone busy meanwhile: twice
    # (and a last one at the stop).
    assert looks[0] > 0 and looks[2] > 0 and looks[1] == looks[3] == float("-inf")
