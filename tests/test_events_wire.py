"""The wire rules of events and streams, without Redis: names, envelopes, entries, dead
letters, stream messages; and what Service.subscribe / Service.on / generators register."""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from rpc_redis import (
    InternalError,
    InvalidRequest,
    RpcError,
    Service,
    StreamingRequired,
    StreamingUnsupported,
    protocol,
)
from rpc_redis.errors import error_from_object
from rpc_redis.events import streams, wire

LUA = Path(__file__).resolve().parent.parent / "rpc_redis" / "worker" / "lua"


# -- names -------------------------------------------------------------------------------


def test_channels_and_streams_are_named_under_the_prefix() -> None:
    assert wire.channel_name("sms_replies") == "rpc:channel:sms_replies"
    assert wire.channel_name("x", "shop") == "shop:channel:x"
    assert wire.event_channel("rpc:channel:sms.in") == "sms.in"
    assert wire.stream_key("orders") == "rpc:stream:{orders}"
    assert protocol.slot_tag(wire.stream_key("orders", "shop")) == "orders"


def test_a_pattern_is_a_glob_only_where_the_handler_wrote_one() -> None:
    pattern = wire.channel_pattern("sms.*", "a*[b]")
    assert pattern == "a\\*\\[b\\]:channel:sms.*"
    # Redis's glob is fnmatch's, with backslash escapes: the prefix is matched literally.
    literal = pattern.replace("\\*", "[*]").replace("\\[", "[[]").replace("\\]", "[]]")
    assert fnmatch.fnmatchcase("a*[b]:channel:sms.in", literal)
    assert not fnmatch.fnmatchcase("aXb:channel:sms.in", literal)


@pytest.mark.parametrize("topic", ["", "a{b", "a}b", "{orders}"])
def test_a_topic_cannot_break_its_hash_tag(topic: str) -> None:
    with pytest.raises(ValueError):
        wire.stream_key(topic)


# -- the envelope ----------------------------------------------------------------------


def test_an_event_round_trips_with_its_meta() -> None:
    body = wire.encode_event({"from": "ann"}, {"trace": "t1"})
    assert protocol.loads(body) == {"v": 1, "data": {"from": "ann"}, "meta": {"trace": "t1"}}
    assert wire.decode_event(body) == wire.Event({"from": "ann"}, {"trace": "t1"})
    assert protocol.loads(wire.encode_event(3)) == {"v": 1, "data": 3}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"from":"ann","to":"bob"}', wire.Event({"from": "ann", "to": "bob"})),
        (b"[1,2]", wire.Event([1, 2])),
        (b'"text"', wire.Event("text")),
        (b'{"v":1}', wire.Event({"v": 1})),  # no data: a bare object
        (b'{"data":1}', wire.Event({"data": 1})),  # no v: a bare object
        (b'{"v":1,"data":null,"meta":null}', wire.Event(None)),
    ],
)
def test_anything_but_an_envelope_is_the_data_itself(raw: bytes, expected: wire.Event) -> None:
    assert wire.decode_event(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff", "not valid JSON"),
        (b'{"v":2,"data":1}', "unsupported envelope version 2"),
        (b'{"v":true,"data":1}', "unsupported envelope version true"),
        (b'{"v":1,"data":1,"meta":{"k":1}}', "envelope meta values must be strings"),
        (b'{"v":1,"data":1,"meta":[]}', "envelope meta must be an object of strings"),
    ],
)
def test_what_is_not_an_event_says_why(raw: bytes, reason: str) -> None:
    problem = wire.decode_event(raw)
    assert isinstance(problem, str)
    assert problem.startswith(reason)


def test_an_event_past_the_size_limit_is_refused_before_it_is_parsed() -> None:
    assert wire.decode_event(b"[" + b"1," * 10 + b"1]", max_bytes=10) == (
        "event of 23 bytes exceeds the limit of 10"
    )


def test_emit_trims_its_stream_approximately_and_refuses_a_bad_maxlen() -> None:
    command = wire.emit_command("orders", b"{}", "rpc", 500)
    assert command == ("XADD", "rpc:stream:{orders}", "MAXLEN", "~", 500, "*", "event", b"{}")
    for bad in (0, -1, True, 1.5, "10"):
        with pytest.raises(ValueError):
            wire.emit_command("orders", b"{}", "rpc", bad)  # type: ignore[arg-type]


# -- entries and dead letters -------------------------------------------------------------


def test_entries_are_read_from_resp2_and_resp3_answers() -> None:
    fields = [b"event", b'{"v":1,"data":1}', b"for", b"billing"]
    resp2 = [[b"rpc:stream:{orders}", [[b"1-0", fields], [b"2-0", [b"other", b"x"]]]]]
    resp3 = {b"rpc:stream:{orders}": [[b"1-0", fields], [b"2-0", [b"other", b"x"]]]}
    for answer in (resp2, resp3):
        first, second = wire.entries_read(answer)
        assert first == wire.Entry("1-0", b'{"v":1,"data":1}', "billing", 1)
        assert second == wire.Entry("2-0", None, None, 1)
    assert wire.entries_read(None) == []
    as_map = wire.entry_from_fields(b"3-0", {b"event": b"[]"}, 4)
    assert as_map == wire.Entry("3-0", b"[]", None, 4)


def test_an_event_dead_letter_says_where_it_came_from_and_requeues_for_its_service() -> None:
    entry = wire.Entry("5-0", b'{"v":1,"data":{"id":7}}', None, 3)
    letter = protocol.loads(
        wire.encode_event_dead_letter(
            entry.raw, "failed 3 times", "rpc:stream:{orders}", "billing", entry, 12.5
        )
    )
    assert letter == {
        "reason": "failed 3 times",
        "stream": "rpc:stream:{orders}",
        "group": "billing",
        "id": "5-0",
        "deliveries": 3,
        "time": 12.5,
        "message": '{"v":1,"data":{"id":7}}',
    }
    assert wire.requeue_fields(letter) == {"event": letter["message"], "for": "billing"}
    binary = protocol.loads(
        wire.encode_event_dead_letter(b"\xff", "x", "rpc:stream:{o}", "billing", entry, 1)
    )
    assert binary["message_base64"] == "/w=="
    assert wire.requeue_fields(binary) is None  # only text goes back
    none = protocol.loads(wire.encode_event_dead_letter(None, "x", "s", "g", entry, 1))
    assert "message" not in none and "message_base64" not in none


def test_every_events_script_names_one_key_so_it_runs_in_one_cluster_slot() -> None:
    for name in ("claim_events.lua", "forget_consumers.lua", "push_items.lua"):
        script = (LUA / name).read_text()
        assert "KEYS[1]" in script
        assert "KEYS[2]" not in script, name


# -- streamed results -----------------------------------------------------------------


def test_a_stream_is_asked_for_with_a_window_the_worker_bounds() -> None:
    assert streams.stream_member(16) == {"window": 16}
    assert streams.window_of({"window": 16}) == 16
    assert streams.window_of({}) == streams.DEFAULT_WINDOW
    assert streams.window_of({"window": 10**9}) == streams.MAX_WINDOW
    for bad in ({"window": 0}, {"window": "8"}, {"window": True}, [], "x", 3):
        assert isinstance(streams.window_of(bad), InvalidRequest)
    for bad_window in (0, -1, True, 2.0):
        with pytest.raises(ValueError):
            streams.stream_member(bad_window)  # type: ignore[arg-type]


def test_a_stream_is_one_request_with_an_id() -> None:
    assert streams.stream_problem({"jsonrpc": "2.0", "method": "m", "id": 1}) is None
    assert streams.stream_problem({"jsonrpc": "2.0", "method": "m"}) is not None
    assert streams.stream_problem([{"jsonrpc": "2.0", "method": "m", "id": 1}]) is not None


def test_a_stream_reads_as_items_then_its_end_or_its_error() -> None:
    item = streams.item_message("id1", {"name": "Tiger"})
    assert item == b'{"id":"id1","item":{"name":"Tiger"}}'
    assert streams.read_message(item, "id1") == streams.Item({"name": "Tiger"})
    end = streams.end_message("id1", 5)
    assert protocol.loads(end) == {"jsonrpc": "2.0", "result": {"items": 5}, "id": "id1"}
    assert streams.read_message(end, "id1") == streams.End(5)
    failed = streams.error_message("id1", RpcError("no more", code=7))
    with pytest.raises(RpcError) as raised:
        streams.read_message(failed, "id1")
    assert (raised.value.code, raised.value.message) == (7, "no more")
    with pytest.raises(InternalError, match="does not belong"):
        streams.read_message(item, "id2")
    with pytest.raises(InternalError):
        streams.read_message(b'{"jsonrpc":"2.0","result":3,"id":"id1"}', "id1")
    assert streams.item_message("id1", object()) is None
    assert streams.unserialisable_item(object()).data == {"type": "object"}


def test_the_streaming_errors_have_codes_of_their_own_that_round_trip() -> None:
    for error_class, code in ((StreamingRequired, -32002), (StreamingUnsupported, -32003)):
        error = error_class(data="hint")
        assert error.code == code
        assert type(error_from_object(error.to_error_object())) is error_class


# -- registration ------------------------------------------------------------------------


def test_generators_register_as_streaming_methods() -> None:
    service = Service("cats")

    @service.method
    def kittens(n: int) -> Iterator[int]:
        yield from range(n)

    @service.method
    async def akittens(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    @service.method
    def plain(n: int) -> int:
        return n

    assert service.methods["kittens"].streams and not service.methods["kittens"].is_async
    assert service.methods["akittens"].streams and service.methods["akittens"].is_async
    assert not service.methods["plain"].streams


def test_event_handlers_register_with_what_they_listen_to() -> None:
    service = Service("bot")

    @service.subscribe("sms_replies")
    def relay(reply: Any) -> None: ...

    @service.subscribe(pattern="sms.*")
    async def watch(message: Any) -> None: ...

    @service.on("orders", time_limit=5)
    def bill(order: Any, note: str = "") -> None: ...

    assert [(s.channel, s.pattern, s.handler.name) for s in service.subscriptions] == [
        ("sms_replies", None, "relay"),
        (None, "sms.*", "watch"),
    ]
    assert service.subscriptions[1].handler.is_async
    assert service.consumers["orders"].handler.time_limit == 5
    assert service.handles_events and not service.methods
    asyncio.run(watch(None))  # the decorators hand the functions back unchanged
    assert relay(None) is None


def test_event_handlers_that_cannot_work_are_refused_when_they_are_written() -> None:
    service = Service("bot")
    with pytest.raises(ValueError, match="exactly one"):
        service.subscribe()
    with pytest.raises(ValueError, match="exactly one"):
        service.subscribe("a", pattern="b*")
    with pytest.raises(ValueError, match="non-empty"):
        service.subscribe("")
    with pytest.raises(ValueError, match="braces"):
        service.on("a{b}")
    with pytest.raises(ValueError, match="positive"):
        service.on("t", time_limit=0)

    def two(a: Any, b: Any) -> None: ...

    def none() -> None: ...

    def generator(a: Any) -> Iterator[None]:
        yield None

    for func in (two, none, generator):
        with pytest.raises(ValueError, match=func.__name__):
            service.subscribe("x")(func)

    @service.on("orders")
    def first(order: Any) -> None: ...

    with pytest.raises(ValueError, match="already has a handler for the topic 'orders'"):
        service.on("orders")
