"""The sans-I/O protocol layer (rpc_redis.protocol and rpc_redis.errors), no Redis needed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpc_redis import protocol
from rpc_redis.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    ParseError,
    RpcError,
    error_from_object,
)
from rpc_redis.protocol import Incoming, Rejected

WIDE_INT = 2**70 + 1  # does not fit in 64 bits, and is odd, so a float cannot hold it
# docs/protocol.md §2: integers in this range are read exactly, wider ones as doubles.
EXACT_INTEGERS = [-(2**63), 2**63 - 1, 2**64 - 1]


def strict_json(data: bytes) -> Any:
    """Parse with the standard library, refusing NaN and Infinity: 'is this valid JSON?'."""

    def reject(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(data.decode("utf-8"), parse_constant=reject)


def wire(value: Any) -> Any:
    """A value as it travels: JSON arrays for every sequence (tuples included)."""
    return json.loads(json.dumps(value))


def request(id: Any = "rpc:reply:abc", method: str = "add", params: Any = (1, 2)) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": list(params), "id": id}


def envelope(**members: Any) -> bytes:
    members.setdefault("v", protocol.ENVELOPE_VERSION)
    members.setdefault("request", request(id=7))
    return json.dumps(members).encode()


# -- keys ---------------------------------------------------------------------------


def test_key_names() -> None:
    assert protocol.queue_key("calculator") == "rpc:queue:{calculator}"
    assert protocol.queue_key("calculator", prefix="app") == "app:queue:{calculator}"
    assert protocol.queue_namespace() == "rpc:queue:"
    assert protocol.queue_namespace("app") == "app:queue:"
    assert protocol.reply_key("t0k3n") == "rpc:reply:t0k3n"
    assert protocol.reply_key("t0k3n", prefix="app") == "app:reply:t0k3n"
    assert protocol.dead_letter_key("calculator") == "rpc:dead:{calculator}"
    assert protocol.dead_letter_key("calculator", prefix="app") == "app:dead:{calculator}"


def test_queue_keys_are_in_the_queue_namespace_and_reply_keys_are_not() -> None:
    assert protocol.queue_key("cats").startswith(protocol.queue_namespace())
    assert not protocol.reply_key("cats").startswith(protocol.queue_namespace())
    assert not protocol.dead_letter_key("cats").startswith(protocol.queue_namespace())


# -- building requests ----------------------------------------------------------------


def test_params_from_positional_arguments() -> None:
    params = protocol.params_from((1, "two"), {})
    assert params == [1, "two"]
    assert type(params) is list


def test_params_from_keyword_arguments_copies_them() -> None:
    kwargs = {"a": 1, "b": 2}
    params = protocol.params_from((), kwargs)
    assert params == {"a": 1, "b": 2}
    assert params is not kwargs


def test_params_from_nothing_is_an_empty_list() -> None:
    assert protocol.params_from((), {}) == []


def test_params_from_both_kinds_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="positional or keyword"):
        protocol.params_from((1,), {"b": 2})


@pytest.mark.parametrize("params", [[1, 2], {"a": 1, "b": 2}])
@pytest.mark.parametrize("request_id", ["rpc:reply:x", 42])
def test_request_object(params: Any, request_id: Any) -> None:
    built = protocol.request_object("add", params, request_id)
    assert wire(built) == {"jsonrpc": "2.0", "method": "add", "params": params, "id": request_id}
    assert protocol.request_problem(built) is None
    assert protocol.expects_reply(built)


@pytest.mark.parametrize("params", [[], {}])
def test_request_object_leaves_out_empty_params(params: Any) -> None:
    built = protocol.request_object("ping", params, "k")
    assert built == {"jsonrpc": "2.0", "method": "ping", "id": "k"}


def test_notification_object() -> None:
    built = protocol.notification_object("log", {"line": "hi"})
    assert wire(built) == {"jsonrpc": "2.0", "method": "log", "params": {"line": "hi"}}
    assert "id" not in built
    assert protocol.request_problem(built) is None
    assert not protocol.expects_reply(built)
    assert protocol.notification_object("log", []) == {"jsonrpc": "2.0", "method": "log"}
    positional = protocol.notification_object("log", ["a", 1])
    assert wire(positional) == {"jsonrpc": "2.0", "method": "log", "params": ["a", 1]}
    assert protocol.request_problem(wire(positional)) is None


# -- envelopes ------------------------------------------------------------------------


def test_encode_envelope_members() -> None:
    body = strict_json(protocol.encode_envelope(request(), "rpc:reply:k", 1700000000.12345678))
    assert body == {
        "v": protocol.ENVELOPE_VERSION,
        "reply_to": "rpc:reply:k",
        "deadline": 1700000000.123457,
        "request": request(),
    }


def test_encode_envelope_leaves_out_absent_reply_key_and_deadline() -> None:
    body = strict_json(protocol.encode_envelope(request(), None, None))
    assert body == {"v": protocol.ENVELOPE_VERSION, "request": request()}


@pytest.mark.parametrize(
    "payload",
    [
        request(id="c1"),
        [request(id="c1"), protocol.notification_object("log", ["x"]), request(id=3)],
    ],
)
def test_envelope_round_trip(payload: Any) -> None:
    raw = protocol.encode_envelope(payload, "rpc:reply:k", 1700000000.5)
    assert protocol.decode_message(raw) == Incoming(
        wire(payload), "rpc:reply:k", 1700000000.5, enveloped=True
    )


def test_envelope_round_trip_without_reply_key_or_deadline() -> None:
    notification = protocol.notification_object("log", ["x"])
    raw = protocol.encode_envelope(notification, None, None)
    assert protocol.decode_message(raw) == Incoming(wire(notification), None, None, enveloped=True)


def test_envelope_meta_round_trip_and_is_left_out_when_empty() -> None:
    meta = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    raw = protocol.encode_envelope(request(id="c1"), "rpc:reply:k", None, meta=meta)
    assert strict_json(raw)["meta"] == meta
    assert protocol.decode_message(raw) == Incoming(
        wire(request(id="c1")), "rpc:reply:k", None, enveloped=True, meta=meta
    )
    assert "meta" not in strict_json(protocol.encode_envelope(request(), None, None, meta={}))


@pytest.mark.parametrize(
    "meta",
    [
        "token",
        {"k": 1},
        {"k": None},
        {"": "v"},
        {"k" * 65: "v"},
        {"k": "v" * 1025},
        {str(n): "v" for n in range(protocol.MAX_META_MEMBERS + 1)},
    ],
)
def test_envelope_meta_out_of_bounds_is_rejected_with_a_reply(meta: Any) -> None:
    envelope = {"v": 1, "reply_to": "rpc:reply:k", "meta": meta, "request": request(id="c1")}
    decoded = protocol.decode_message(json.dumps(envelope).encode())
    assert isinstance(decoded, Rejected)
    assert decoded.reason.startswith("envelope meta")
    assert (decoded.reply_to, decoded.request_id) == ("rpc:reply:k", "c1")
    assert isinstance(decoded.error, InvalidRequest)


def test_envelope_meta_at_its_bounds_is_accepted() -> None:
    meta = {f"{n:064d}": "v" * protocol.MAX_META_VALUE_LENGTH for n in range(32)}
    envelope = {"v": 1, "reply_to": "rpc:reply:k", "meta": meta, "request": request(id="c1")}
    decoded = protocol.decode_message(json.dumps(envelope).encode())
    assert isinstance(decoded, Incoming) and decoded.meta == meta


def test_integers_up_to_64_bits_survive_the_request_round_trip() -> None:
    raw = protocol.encode_envelope(request(params=EXACT_INTEGERS), "rpc:reply:k", None)
    incoming = protocol.decode_message(raw)
    assert isinstance(incoming, Incoming)
    assert incoming.payload["params"] == EXACT_INTEGERS
    assert all(type(value) is int for value in incoming.payload["params"])


def test_wider_integers_are_written_exactly_and_read_as_doubles() -> None:
    # docs/protocol.md §2: "18446744073709551616 arrives at the handler as
    # 1.8446744073709552e+19. Send wider integers as strings."
    raw = protocol.encode_envelope(request(params=[2**64, WIDE_INT]), "rpc:reply:k", None)
    assert f"[{2**64},{WIDE_INT}]".encode() in raw
    incoming = protocol.decode_message(raw)
    assert isinstance(incoming, Incoming)
    assert incoming.payload["params"] == [1.8446744073709552e19, float(WIDE_INT)]
    assert all(type(value) is float for value in incoming.payload["params"])


# -- decode_message: what is not a request ----------------------------------------------


def test_decode_non_json_is_a_parse_error_with_no_reply_key() -> None:
    rejected = protocol.decode_message(b"{not json")
    assert isinstance(rejected, Rejected)
    assert isinstance(rejected.error, ParseError)
    assert rejected.error.code == PARSE_ERROR
    assert rejected.reply_to is None
    assert rejected.request_id is None


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe\xfd",
        b'{"jsonrpc":"2.0","method":"add\xff","id":"rpc:reply:k"}',
        b'{"jsonrpc":"2.0","method":"\xc3\x28","id":"rpc:reply:k"}',
    ],
)
def test_decode_invalid_utf8_is_a_parse_error(raw: bytes) -> None:
    rejected = protocol.decode_message(raw)
    assert isinstance(rejected, Rejected)
    assert isinstance(rejected.error, ParseError)
    assert rejected.reply_to is None


@pytest.mark.parametrize(
    "raw",
    [
        b"NaN",
        b'{"deadline": Infinity, "request": {}}',
        b"",
        b"[1e400]",  # too large for a double
        b'\xef\xbb\xbf{"jsonrpc":"2.0","method":"m","id":"k"}',  # byte-order mark
        b'{"jsonrpc":"2.0","method":"\\ud800","id":"k"}',  # unpaired surrogate escape
    ],
)
def test_decode_rejects_what_strict_json_rejects(raw: bytes) -> None:
    rejected = protocol.decode_message(raw)
    assert isinstance(rejected, Rejected)
    assert isinstance(rejected.error, ParseError)


# -- decode_message: bare requests ------------------------------------------------------


def test_decode_bare_request_replies_to_its_string_id() -> None:
    bare = request(id="rpc:reply:abc")
    decoded = protocol.decode_message(json.dumps(bare).encode())
    assert decoded == Incoming(bare, "rpc:reply:abc", None, enveloped=False)


def test_decode_bare_batch_replies_to_the_first_string_id() -> None:
    batch = [
        protocol.notification_object("log", ["x"]),
        request(id=1),
        request(id=""),
        request(id="rpc:reply:first"),
        request(id="rpc:reply:second"),
    ]
    decoded = protocol.decode_message(json.dumps(batch).encode())
    assert decoded == Incoming(wire(batch), "rpc:reply:first", None, enveloped=False)


@pytest.mark.parametrize("request_id", [1, 2.5, None, ""])
def test_decode_bare_request_without_a_string_id_has_no_reply_key(request_id: Any) -> None:
    decoded = protocol.decode_message(json.dumps(request(id=request_id)).encode())
    assert isinstance(decoded, Incoming)
    assert decoded.reply_to is None
    assert not decoded.enveloped


def test_decode_bare_notification_has_no_reply_key() -> None:
    bare = protocol.notification_object("log", ["x"])
    assert protocol.decode_message(json.dumps(bare).encode()) == Incoming(
        wire(bare), None, None, enveloped=False
    )


def test_a_request_with_a_request_member_is_bare_not_an_envelope() -> None:
    # "jsonrpc" marks a bare request, even one whose extra members include "request".
    bare = {**request(id="rpc:reply:k"), "request": {"method": "other"}}
    decoded = protocol.decode_message(json.dumps(bare).encode())
    assert decoded == Incoming(bare, "rpc:reply:k", None, enveloped=False)


# -- decode_message: envelopes -----------------------------------------------------------


def test_decode_envelope_without_version_is_version_one() -> None:
    raw = json.dumps({"reply_to": "rpc:reply:k", "request": request(id=7)}).encode()
    assert protocol.decode_message(raw) == Incoming(request(id=7), "rpc:reply:k", None, True)


@pytest.mark.parametrize("version", [2, 0, "1", None, [1], 1.0])
def test_decode_envelope_with_bad_version(version: Any) -> None:
    rejected = protocol.decode_message(envelope(v=version, reply_to="rpc:reply:k"))
    assert isinstance(rejected, Rejected)
    assert isinstance(rejected.error, InvalidRequest)
    assert rejected.reason == f"unsupported envelope version {json.dumps(version)}"
    assert rejected.error.message == "Invalid request"
    assert rejected.error.data == rejected.reason
    # The caller is still told: the reply key and id are known.
    assert rejected.reply_to == "rpc:reply:k"
    assert rejected.request_id == 7


def test_decode_envelope_with_boolean_version() -> None:
    # JSON true is not the number 1 (the deadline check rejects booleans the same way).
    rejected = protocol.decode_message(envelope(v=True, reply_to="rpc:reply:k"))
    assert isinstance(rejected, Rejected)
    assert isinstance(rejected.error, InvalidRequest)
    assert rejected.reply_to == "rpc:reply:k"


@pytest.mark.parametrize("reply_to", [42, "", [], {"key": "x"}, True])
def test_decode_envelope_with_bad_reply_to(reply_to: Any) -> None:
    rejected = protocol.decode_message(envelope(reply_to=reply_to))
    assert isinstance(rejected, Rejected)
    assert isinstance(rejected.error, InvalidRequest)
    assert rejected.reason == "envelope reply_to must be a non-empty string"
    assert rejected.reply_to is None  # nowhere to reply: it goes to the dead letters
    assert rejected.request_id == 7


def test_decode_envelope_with_null_reply_to_expects_no_reply() -> None:
    notification = protocol.notification_object("log", ["x"])
    decoded = protocol.decode_message(envelope(reply_to=None, request=notification))
    assert decoded == Incoming(wire(notification), None, None, enveloped=True)


@pytest.mark.parametrize("deadline", ["soon", True, False, [1], {"at": 1}])
def test_decode_envelope_with_bad_deadline(deadline: Any) -> None:
    rejected = protocol.decode_message(envelope(reply_to="rpc:reply:k", deadline=deadline))
    assert isinstance(rejected, Rejected)
    assert isinstance(rejected.error, InvalidRequest)
    assert rejected.reason == ("envelope deadline must be a number (seconds since the Unix epoch)")
    assert rejected.error.data == rejected.reason
    assert rejected.reply_to == "rpc:reply:k"
    assert rejected.request_id == 7


@pytest.mark.parametrize("deadline", [1700000000, 1700000000.25])
def test_decode_envelope_with_numeric_deadline(deadline: float) -> None:
    decoded = protocol.decode_message(envelope(reply_to="rpc:reply:k", deadline=deadline))
    assert isinstance(decoded, Incoming)
    assert decoded.deadline == deadline


# -- decode_message: size limit ------------------------------------------------------------


def test_oversized_non_json_is_rejected_as_too_large_with_no_reply_key() -> None:
    raw = b"x" * 101
    rejected = protocol.decode_message(raw, max_bytes=100)
    assert isinstance(rejected, Rejected)
    assert isinstance(rejected.error, InvalidRequest)
    assert rejected.error.message == "Request too large"
    assert rejected.error.data == {"size": 101, "limit": 100}
    assert rejected.reason == "message of 101 bytes exceeds the limit of 100"
    assert rejected.reply_to is None
    assert rejected.request_id is None


def test_oversized_bare_request_keeps_reply_key_and_id() -> None:
    raw = json.dumps(request(id="rpc:reply:big", params=["x" * 500])).encode()
    rejected = protocol.decode_message(raw, max_bytes=100)
    assert isinstance(rejected, Rejected)
    assert isinstance(rejected.error, InvalidRequest)
    assert rejected.error.data == {"size": len(raw), "limit": 100}
    assert rejected.reply_to == "rpc:reply:big"
    assert rejected.request_id == "rpc:reply:big"


def test_oversized_envelope_keeps_reply_key_and_id() -> None:
    raw = protocol.encode_envelope(request(id=9, params=["x" * 500]), "rpc:reply:k", None)
    rejected = protocol.decode_message(raw, max_bytes=100)
    assert isinstance(rejected, Rejected)
    assert rejected.error.code == INVALID_REQUEST
    assert "exceeds" in rejected.reason
    assert rejected.reply_to == "rpc:reply:k"
    assert rejected.request_id == 9


def test_a_message_far_over_the_limit_is_not_even_parsed() -> None:
    assert protocol.unread_above(100) == 100 + 2**20  # small limits: the 1 MiB
    assert protocol.unread_above(4 * 2**20) == 8 * 2**20  # the default's: twice
    far = protocol.encode_envelope(request(id=9, params=["x" * 2**21]), "rpc:reply:k", None)
    rejected = protocol.decode_message(far, max_bytes=100)
    assert isinstance(rejected, Rejected) and rejected.reply_to is None
    assert rejected.reason == f"message of {len(far)} bytes exceeds the limit of 100"


def test_a_dead_letter_keeps_a_message_whole_unless_far_over_the_limit() -> None:
    over = b"x" * 400
    kept = protocol.decode_dead_letter(protocol.encode_dead_letter(over, "r", "q", 1.0, 100))
    assert kept["raw"] == over and "truncated" not in kept
    far = b"x" * (protocol.unread_above(100) + 1)
    cut = protocol.decode_dead_letter(protocol.encode_dead_letter(far, "r", "q", 1.0, 100))
    assert cut["raw"] == far[: protocol.DEAD_LETTER_HEAD_BYTES]
    assert cut["truncated"] is True and cut["size"] == len(far)


def test_a_message_exactly_at_the_limit_is_accepted() -> None:
    raw = protocol.encode_envelope(request(id=9), "rpc:reply:k", None)
    assert isinstance(protocol.decode_message(raw, max_bytes=len(raw)), Incoming)
    assert isinstance(protocol.decode_message(raw, max_bytes=len(raw) - 1), Rejected)


@pytest.mark.parametrize(
    "members, max_bytes",
    [
        ({}, 100),  # too large
        ({"v": 99}, protocol.DEFAULT_MAX_MESSAGE_BYTES),  # unsupported envelope version
        ({"deadline": "soon"}, protocol.DEFAULT_MAX_MESSAGE_BYTES),  # bad deadline
    ],
)
def test_a_rejected_batch_is_answered_as_a_whole(members: dict[str, Any], max_bytes: int) -> None:
    # A batch rejected before dispatch gets one error response with a null id (JSON-RPC
    # 2.0, section 6), which outcomes_by_id reads as "the whole batch was rejected"; an
    # error addressed to the first call alone would leave the other calls unanswered.
    batch = [request(id=1, params=["x" * 100]), request(id=2), request(id=3)]
    raw = envelope(reply_to="rpc:reply:k", request=batch, **members)
    rejected = protocol.decode_message(raw, max_bytes=max_bytes)
    assert isinstance(rejected, Rejected)
    assert rejected.reply_to == "rpc:reply:k"
    assert rejected.request_id is None
    reply = protocol.error_response(rejected.request_id, rejected.error)
    assert reply["id"] is None
    with pytest.raises(InvalidRequest):
        protocol.outcomes_by_id(reply)


def test_an_oversized_bare_batch_is_answered_as_a_whole() -> None:
    batch = [request(id="rpc:reply:b", params=["x" * 100]), request(id=2)]
    rejected = protocol.decode_message(json.dumps(batch).encode(), max_bytes=100)
    assert isinstance(rejected, Rejected)
    assert isinstance(rejected.error, InvalidRequest)
    assert rejected.reply_to == "rpc:reply:b"
    assert rejected.request_id is None


# -- reply keys -----------------------------------------------------------------------------


def test_an_ordinary_reply_key_has_no_problem() -> None:
    assert protocol.reply_key_problem("rpc:reply:abc", {"rpc:queue:{calculator}"}) is None


def test_a_served_queue_is_not_a_reply_key() -> None:
    problem = protocol.reply_key_problem("jobs", {"jobs", "rpc:queue:{calculator}"})
    assert problem is not None
    assert "queue" in problem


@pytest.mark.parametrize(
    "reply_to, prefix",
    [("rpc:queue:{other}", "rpc"), ("rpc:queue:", "rpc"), ("app:queue:{cats}", "app")],
)
def test_the_queue_namespace_is_not_a_reply_key(reply_to: str, prefix: str) -> None:
    assert protocol.reply_key_problem(reply_to, set(), prefix=prefix) is not None


def test_another_prefix_queue_namespace_is_allowed() -> None:
    assert protocol.reply_key_problem("rpc:queue:{x}", set(), prefix="app") is None


def test_a_too_long_reply_key() -> None:
    longest = "r" * protocol.MAX_REPLY_KEY_LENGTH
    assert protocol.reply_key_problem(longest, set()) is None
    problem = protocol.reply_key_problem(longest + "r", set())
    assert problem is not None
    assert "longer" in problem


@pytest.mark.parametrize(
    ("reply_to", "prefix", "may_exist"),
    [
        ("rpc:reply:abc", "rpc", True),  # a key many calls may share
        ("rpc:reply:", "rpc", True),
        ("app:reply:abc", "app", True),
        ("app:reply:abc", "rpc", False),  # another deployment's reply namespace
        ("0b6c7f1e-4e38-4c3a-9d0b-52f3b2a1c9e4", "rpc", False),  # a bare request's UUID
        ("app:todo", "rpc", False),
        ("rpc:replyx", "rpc", False),
    ],
)
def test_only_keys_under_the_reply_namespace_may_already_hold_replies(
    reply_to: str, prefix: str, may_exist: bool
) -> None:
    assert protocol.reply_key_may_exist(reply_to, prefix) is may_exist
    assert protocol.reply_key(reply_to, prefix).startswith(protocol.reply_namespace(prefix))


def test_a_refused_reply_says_what_it_found() -> None:
    assert protocol.refused_reply_reason("rpc:reply:x", "hash") == (
        "reply key 'rpc:reply:x' holds a hash, not a list"
    )
    assert protocol.refused_reply_reason("app:todo", "list") == (
        "reply key 'app:todo' holds a list and is not under 'rpc:reply:': outside it a "
        "worker writes only to keys that do not exist"
    )


# -- request validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "valid",
    [
        {"jsonrpc": "2.0", "method": "m"},
        {"jsonrpc": "2.0", "method": "m", "id": None},
        {"jsonrpc": "2.0", "method": "m", "id": 1},
        {"jsonrpc": "2.0", "method": "m", "id": 1.5},
        {"jsonrpc": "2.0", "method": "m", "id": "x"},
        {"jsonrpc": "2.0", "method": "m", "params": [], "id": 1},
        {"jsonrpc": "2.0", "method": "m", "params": {"a": 1}, "id": 1},
        {"jsonrpc": "2.0", "method": "", "id": 1},
    ],
)
def test_valid_requests_have_no_problem(valid: dict[str, Any]) -> None:
    assert protocol.request_problem(valid) is None


def test_members_the_spec_does_not_define_are_allowed() -> None:
    extra = {"jsonrpc": "2.0", "method": "m", "id": 1, "trace": {"span": "abc"}, "x": None}
    assert protocol.request_problem(extra) is None


@pytest.mark.parametrize("not_an_object", [[], [request()], "request", 1, None, True])
def test_a_request_must_be_an_object(not_an_object: Any) -> None:
    assert protocol.request_problem(not_an_object) == "a request must be a JSON object"


@pytest.mark.parametrize(
    "jsonrpc_members",
    [{}, {"jsonrpc": "1.0"}, {"jsonrpc": 2.0}, {"jsonrpc": "2"}, {"jsonrpc": None}],
)
def test_jsonrpc_must_be_exactly_2_0(jsonrpc_members: dict[str, Any]) -> None:
    problem = protocol.request_problem({**jsonrpc_members, "method": "m", "id": 1})
    assert problem is not None
    assert '"jsonrpc"' in problem


@pytest.mark.parametrize("method_members", [{}, {"method": 1}, {"method": None}, {"method": []}])
def test_method_must_be_a_string(method_members: dict[str, Any]) -> None:
    problem = protocol.request_problem({"jsonrpc": "2.0", **method_members, "id": 1})
    assert problem is not None
    assert '"method"' in problem


@pytest.mark.parametrize("params", ["bar", 1, None, True])
def test_params_must_be_structured(params: Any) -> None:
    problem = protocol.request_problem({"jsonrpc": "2.0", "method": "m", "params": params})
    assert problem is not None
    assert '"params"' in problem


@pytest.mark.parametrize("request_id", [True, False, [], {}, [1]])
def test_id_must_be_a_string_number_or_null(request_id: Any) -> None:
    problem = protocol.request_problem({"jsonrpc": "2.0", "method": "m", "id": request_id})
    assert problem is not None
    assert '"id"' in problem


# -- expects_reply --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload, expected",
    [
        (request(id=1), True),
        (request(id=None), True),  # an id of null is still a request
        ({"jsonrpc": "2.0", "method": "log"}, False),
        ([{"jsonrpc": "2.0", "method": "a"}, {"jsonrpc": "2.0", "method": "b"}], False),
        ([{"jsonrpc": "2.0", "method": "a"}, request(id=2)], True),
        ([], True),  # an empty batch is answered with an error
        ([1, 2, 3], True),
        ("garbage", True),
        (None, True),
        ({"jsonrpc": "2.0"}, True),
    ],
)
def test_expects_reply(payload: Any, expected: bool) -> None:
    assert protocol.expects_reply(payload) is expected


@pytest.mark.parametrize(
    "malformed",
    [
        # JSON-RPC 2.0, section 7: "rpc call with invalid Request object" is answered
        # with -32600 and a null id, although it has no id member.
        {"jsonrpc": "2.0", "method": 1, "params": "bar"},
        {"jsonrpc": "1.0", "method": "log"},
        {"method": "log"},
        {"jsonrpc": "2.0", "method": "log", "params": "not structured"},
    ],
)
def test_a_malformed_notification_expects_its_error_reply(malformed: dict[str, Any]) -> None:
    # expects_reply's docstring: "Anything malformed counts as expecting a reply, since
    # its error is one."
    assert protocol.request_problem(malformed) is not None
    assert protocol.expects_reply(malformed) is True
    assert protocol.expects_reply([malformed, {"jsonrpc": "2.0", "method": "log"}]) is True


# -- encoding responses -------------------------------------------------------------------------


def ok(request_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "result": result, "id": request_id}


def test_encode_response_is_compact_json() -> None:
    encoded = protocol.encode_response(ok(1, {"sum": 3}))
    assert encoded == b'{"jsonrpc":"2.0","result":{"sum":3},"id":1}'


def test_an_unserialisable_result_becomes_an_internal_error_for_its_id() -> None:
    reply = strict_json(protocol.encode_response(ok("rpc:reply:k", object())))
    assert reply == {
        "jsonrpc": "2.0",
        "error": {
            "code": INTERNAL_ERROR,
            "message": "Result is not JSON serialisable",
            "data": {"type": "object"},
        },
        "id": "rpc:reply:k",
    }


def test_an_unserialisable_result_does_not_spoil_the_rest_of_a_batch() -> None:
    batch = [ok(1, [1, 2]), ok(2, {1, 2}), ok(3, "three"), ok(4, WIDE_INT)]
    reply = strict_json(protocol.encode_response(batch))
    assert len(reply) == 4
    assert reply[0] == ok(1, [1, 2])
    assert reply[1]["id"] == 2
    assert "result" not in reply[1]
    assert reply[1]["error"]["code"] == INTERNAL_ERROR
    assert reply[1]["error"]["data"] == {"type": "set"}
    assert reply[2] == ok(3, "three")
    assert reply[3] == ok(4, WIDE_INT)


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [254, 256, 990, 1024, 5000])
def test_a_result_nested_however_deep_gets_a_reply(depth: int) -> None:
    """orjson stops at 255 levels, and json.dumps at the recursion limit (RecursionError)."""
    reply = strict_json(protocol.encode_response(ok("rpc:reply:k", nested(depth))))
    if "result" in reply:
        assert reply == ok("rpc:reply:k", nested(depth))
    else:
        assert depth > 255 and reply["id"] == "rpc:reply:k"
        assert reply["error"] == {
            "code": INTERNAL_ERROR,
            "message": "Result is not JSON serialisable",
            "data": {"type": "list"},
        }


def test_error_data_nested_too_deep_is_left_out_of_the_error() -> None:
    response = {"jsonrpc": "2.0", "error": {"code": 1001, "message": "No", "data": nested(5000)}}
    reply = strict_json(protocol.encode_response({**response, "id": 7}))
    assert reply == {"jsonrpc": "2.0", "error": {"code": 1001, "message": "No"}, "id": 7}


def test_a_reply_over_the_limit_becomes_an_error_for_its_id() -> None:
    body = protocol.encode_response(ok("k", "x" * 5000))
    reply = strict_json(protocol.reply_within(ok("k", "x" * 5000), body, 2000))
    assert reply["id"] == "k"
    assert reply["error"] == {
        "code": INTERNAL_ERROR,
        "message": "Reply too large",
        "data": {"size": len(body), "limit": 2000},
    }


@pytest.mark.parametrize("size", [1, 999, 1000])
def test_a_batch_up_to_the_limit_is_accepted(size: int) -> None:
    message = json.dumps([{"jsonrpc": "2.0", "method": "m", "id": "k"}] * size).encode()
    decoded = protocol.decode_message(message, max_batch=1000)
    assert isinstance(decoded, Incoming) and len(decoded.payload) == size


def test_a_batch_over_the_limit_is_rejected_whole_with_its_reply_key() -> None:
    batch = [{"jsonrpc": "2.0", "method": "m", "id": 1}, {"jsonrpc": "2.0", "id": "rpc:reply:b"}]
    for message in (batch, {"v": 1, "reply_to": "rpc:reply:b", "request": batch}):
        decoded = protocol.decode_message(json.dumps(message).encode(), max_batch=1)
        assert isinstance(decoded, Rejected)
        assert decoded.reason == "batch of 2 requests exceeds the limit of 1"
        assert decoded.reply_to == "rpc:reply:b" and decoded.request_id is None
        assert decoded.error.message == "Batch too large"
        assert decoded.error.data == {"size": 2, "limit": 1}


def test_encode_response_writes_integers_wider_than_64_bits_exactly() -> None:
    encoded = protocol.encode_response(ok(1, [WIDE_INT, -WIDE_INT]))
    assert strict_json(encoded) == ok(1, [WIDE_INT, -WIDE_INT])
    assert str(WIDE_INT).encode() in encoded


def test_decode_reply_of_non_json_is_an_internal_error() -> None:
    with pytest.raises(InternalError, match="not valid JSON"):
        protocol.decode_reply(b"<html>")


def test_reply_ids() -> None:
    assert protocol.reply_ids(ok(1, None)) == [1]
    assert protocol.reply_ids([ok(1, None), "junk", ok("b", 2)]) == [1, "b"]


# -- dead letters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b'{"jsonrpc":"2.0","method":"add","id":"k"}', "héllo, 世界 🐈".encode(), b""],
)
def test_dead_letter_round_trip_of_utf8(raw: bytes) -> None:
    entry = protocol.encode_dead_letter(raw, "no reply key", "rpc:queue:{cats}", 1700000000.1234567)
    stored = strict_json(entry)
    assert stored["message"] == raw.decode("utf-8")
    assert "message_base64" not in stored
    decoded = protocol.decode_dead_letter(entry)
    assert decoded["raw"] == raw
    assert decoded["reason"] == "no reply key"
    assert decoded["queue"] == "rpc:queue:{cats}"
    assert decoded["time"] == 1700000000.123457


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00garbage", b'{"method":"\xc3\x28"}', b"\x80"])
def test_dead_letter_round_trip_of_non_utf8_bytes(raw: bytes) -> None:
    entry = protocol.encode_dead_letter(raw, "not valid JSON", "rpc:queue:{cats}", 1.0)
    stored = strict_json(entry)
    assert "message" not in stored
    assert isinstance(stored["message_base64"], str)
    decoded = protocol.decode_dead_letter(entry)
    assert decoded["raw"] == raw
    assert decoded["reason"] == "not valid JSON"


@given(st.binary(max_size=300))
def test_dead_letters_keep_any_bytes(raw: bytes) -> None:
    entry = protocol.encode_dead_letter(raw, "why", "q", 0.0)
    strict_json(entry)
    assert protocol.decode_dead_letter(entry)["raw"] == raw


# -- reading replies: result_of and outcomes_by_id ---------------------------------------------


@pytest.mark.parametrize("result", [3, None, 0, "", [], {}, False, {"nested": [1, 2]}])
def test_result_of_a_success(result: Any) -> None:
    assert protocol.result_of(ok(1, result)) == result


@pytest.mark.parametrize(
    "code, cls",
    [
        (PARSE_ERROR, ParseError),
        (INVALID_REQUEST, InvalidRequest),
        (METHOD_NOT_FOUND, MethodNotFound),
        (INVALID_PARAMS, InvalidParams),
        (INTERNAL_ERROR, InternalError),
        (1001, RpcError),
        (-32000, RpcError),
    ],
)
def test_result_of_an_error_raises_its_class(code: int, cls: type[RpcError]) -> None:
    response = {"jsonrpc": "2.0", "error": {"code": code, "message": "m", "data": [1]}, "id": 1}
    with pytest.raises(RpcError) as caught:
        protocol.result_of(response)
    assert type(caught.value) is cls
    assert caught.value.code == code
    assert caught.value.message == "m"
    assert caught.value.data == [1]


@pytest.mark.parametrize(
    "malformed",
    [
        "a string",
        None,
        [ok(1, 2)],
        {"jsonrpc": "2.0", "id": 1},  # neither result nor error
        {"jsonrpc": "2.0", "result": 1, "error": {"code": 1, "message": "m"}, "id": 1},
        {"jsonrpc": "2.0", "result": 1},  # no id
    ],
)
def test_result_of_a_malformed_reply_is_an_internal_error(malformed: Any) -> None:
    with pytest.raises(InternalError, match="Malformed reply") as caught:
        protocol.result_of(malformed)
    assert type(caught.value) is InternalError
    assert caught.value.data == malformed


def test_outcomes_by_id_of_a_single_response() -> None:
    assert protocol.outcomes_by_id(ok("k", 5)) == {"k": 5}


def test_outcomes_by_id_of_a_batch() -> None:
    reply = [
        ok(1, "one"),
        {"jsonrpc": "2.0", "error": {"code": METHOD_NOT_FOUND, "message": "nope"}, "id": 2},
        {"jsonrpc": "2.0", "error": {"code": 1001, "message": "app"}, "id": 3},
        {"jsonrpc": "2.0", "id": 4},  # malformed
        ok(5, None),
    ]
    outcomes = protocol.outcomes_by_id(reply)
    assert set(outcomes) == {1, 2, 3, 4, 5}
    assert outcomes[1] == "one"
    assert type(outcomes[2]) is MethodNotFound
    assert outcomes[2].message == "nope"
    assert type(outcomes[3]) is RpcError
    assert outcomes[3].code == 1001
    assert type(outcomes[4]) is InternalError
    assert outcomes[5] is None


def test_outcomes_by_id_raises_when_the_whole_batch_was_rejected() -> None:
    reply = protocol.error_response(None, InvalidRequest("Request too large", {"size": 9}))
    with pytest.raises(InvalidRequest) as caught:
        protocol.outcomes_by_id(reply)
    assert caught.value.data == {"size": 9}


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [None, "boom", [1, 2], 42])
def test_error_from_a_non_object(error: Any) -> None:
    exc = error_from_object(error)
    assert type(exc) is InternalError
    assert exc.data == error


@pytest.mark.parametrize(
    "error",
    [
        {"message": "no code"},
        {"code": "-32601", "message": "string code"},
        {"code": -32601.0, "message": "float code"},
        {"code": True, "message": "boolean code"},
        {"code": None, "message": "null code"},
    ],
)
def test_error_with_a_malformed_code(error: dict[str, Any]) -> None:
    exc = error_from_object(error)
    assert type(exc) is InternalError
    assert exc.code == INTERNAL_ERROR
    assert exc.data == error


@pytest.mark.parametrize("message", [None, 7, ["x"]])
def test_error_with_a_malformed_message_keeps_its_code(message: Any) -> None:
    exc = error_from_object({"code": INVALID_PARAMS, "message": message})
    assert type(exc) is InvalidParams
    assert exc.code == INVALID_PARAMS
    assert isinstance(exc.message, str)


def test_error_without_message_keeps_its_code() -> None:
    exc = error_from_object({"code": METHOD_NOT_FOUND})
    assert type(exc) is MethodNotFound
    assert isinstance(exc.message, str)


@given(
    code=st.integers(min_value=-(2**31), max_value=2**31),
    message=st.text(max_size=20),
    data=st.none() | st.integers() | st.text(max_size=10),
)
def test_error_objects_round_trip(code: int, message: str, data: Any) -> None:
    original = RpcError(message, data, code=code)
    exc = error_from_object(original.to_error_object())
    assert (exc.code, exc.message, exc.data) == (code, message, data)
    assert isinstance(exc, RpcError)


def test_rpc_error_defaults_and_text() -> None:
    assert InvalidParams().code == INVALID_PARAMS
    assert InvalidParams().message == "Invalid params"
    assert InvalidParams().to_error_object() == {
        "code": INVALID_PARAMS,
        "message": "Invalid params",
    }
    assert (
        str(RpcError("Division by zero", {"a": 1}, code=1001))
        == "[1001] Division by zero: {'a': 1}"
    )
    assert RpcError("x", code=5).to_error_object() == {"code": 5, "message": "x"}
    assert RpcError("x", 0, code=5).to_error_object() == {"code": 5, "message": "x", "data": 0}


# -- properties ---------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
ids = st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=12)

# Documents shaped like the messages a worker meets, broken in every member.
member_names = st.sampled_from(
    ["v", "request", "reply_to", "deadline", "jsonrpc", "method", "params", "id"]
)
message_documents = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(member_names | st.text(max_size=4), children, max_size=6)
    ),
    max_leaves=25,
)


def check_decoded(decoded: Any) -> None:
    assert isinstance(decoded, (Incoming, Rejected))
    assert decoded.reply_to is None or (isinstance(decoded.reply_to, str) and decoded.reply_to)
    if isinstance(decoded, Rejected):
        assert isinstance(decoded.error, RpcError)
        assert protocol.is_valid_id(decoded.request_id)
        strict_json(
            protocol.encode_response(protocol.error_response(decoded.request_id, decoded.error))
        )


@given(st.binary(max_size=500), st.integers(min_value=1, max_value=600))
def test_decode_message_never_raises_on_bytes(raw: bytes, max_bytes: int) -> None:
    check_decoded(protocol.decode_message(raw, max_bytes=max_bytes))


@settings(max_examples=300)
@given(message_documents, st.sampled_from([64, protocol.DEFAULT_MAX_MESSAGE_BYTES]))
def test_decode_message_never_raises_on_json_documents(document: Any, max_bytes: int) -> None:
    raw = json.dumps(document).encode()
    check_decoded(protocol.decode_message(raw, max_bytes=max_bytes))


@given(st.lists(st.tuples(ids, json_values), min_size=1, max_size=5), st.booleans())
def test_encode_response_always_writes_valid_json(
    results: list[tuple[Any, Any]], as_batch: bool
) -> None:
    responses = [ok(request_id, result) for request_id, result in results]
    response: Any = responses if as_batch else responses[0]
    assert strict_json(protocol.encode_response(response)) == response


# 64-bit integers only: wider ones have their own test above.
json_values_64 = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    params=st.lists(json_values_64, max_size=4)
    | st.dictionaries(st.text(max_size=8), json_values_64, max_size=4),
    request_id=ids,
    reply_to=st.none() | st.text(min_size=1, max_size=30),
    deadline=st.none() | st.floats(min_value=0, max_value=4e9),
)
def test_envelopes_round_trip(
    params: Any, request_id: Any, reply_to: str | None, deadline: float | None
) -> None:
    built = protocol.request_object("method", params, request_id)
    decoded = protocol.decode_message(protocol.encode_envelope(built, reply_to, deadline))
    expected_deadline = None if deadline is None else round(deadline, 6)
    assert decoded == Incoming(wire(built), reply_to, expected_deadline, enveloped=True)


def test_an_error_without_a_message_gets_its_class_default() -> None:
    error = error_from_object({"code": -32601})
    assert isinstance(error, MethodNotFound)
    assert error.message == "Method not found"


def test_notifications_carry_positional_params_as_a_list() -> None:
    assert protocol.notification_object("log", ["x", 1])["params"] == ["x", 1]
    assert isinstance(protocol.notification_object("log", ["x"])["params"], list)
