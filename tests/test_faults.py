"""Real faults against real processes, each bounded in time (the default, non-reliable mode).

Redis killed and restarted under a stream of calls; generated garbage on a queue; replies
nobody collects. Synchronised on events, worker log lines and Redis state, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import string
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rpc_redis import AsyncClient, Client, RpcConnectionError, RpcTimeout, Worker
from rpc_redis.embedded import EmbeddedRedis
from rpc_redis.protocol import (
    DEAD_LETTER_HEAD_BYTES,
    DEFAULT_REPLY_TTL,
    MAX_REPLY_KEY_LENGTH,
    decode_dead_letter,
    unread_above,
)
from rpc_redis.testing import WorkerProcess, serve_in_thread, wait_until
from services.calculator import service as calculator
from tests.conftest import REPOSITORY

QUEUE = "rpc:queue:{calculator}"
DEAD = "rpc:dead:{calculator}"


# -- 1. Redis killed and restarted under a stream of calls ----------------------------

CALL_TIMEOUT = 2.0
HEALTHY_CALLS = 20  # successes each client makes before Redis is killed
CALLS_AFTER_RECOVERY = 20  # after its first success past the restart, all of these succeed
MAX_STREAM_CALLS = 400  # per client, before the restart
FAILURE_PAUSE = 0.05  # a client whose call failed waits this long (or for the restart)
RECOVERY_BOUND = 20.0  # seconds a client may take to get a success after the restart
ALLOWED_FAILURES = (RpcConnectionError.__name__, RpcTimeout.__name__)


@dataclass
class Call:
    phase: str  # "stream" (before the restart), "recovery" or "after"
    outcome: str  # "ok", "wrong result ...", or the exception's class name
    seconds: float
    finished_at: float


@dataclass
class Faults:
    killed_at: float | None = None
    killed: threading.Event = field(default_factory=threading.Event)
    restarted: threading.Event = field(default_factory=threading.Event)
    aborted: threading.Event = field(default_factory=threading.Event)


class CallStream:
    """One client's calls: a stream until the restart, then calls until one succeeds
    (within RECOVERY_BOUND), then CALLS_AFTER_RECOVERY calls that must all succeed."""

    def __init__(self, name: str, faults: Faults) -> None:
        self.name = name
        self.faults = faults
        self.calls: list[Call] = []
        self.healthy = threading.Event()  # HEALTHY_CALLS succeeded
        self.failed_after_kill = threading.Event()
        self.crash: BaseException | None = None
        self.phase = "stream"
        self._successes = 0
        self._after = 0
        self._recovery_deadline = 0.0
        self._count = 0

    def next_args(self) -> tuple[int, int] | None:
        """The next call's arguments, or None when this client is done."""
        if self.faults.aborted.is_set():
            return None
        if self.phase == "stream":
            if len(self.calls) >= MAX_STREAM_CALLS:
                self.faults.restarted.wait(60)  # bounded: enough calls until the restart
            if self.faults.restarted.is_set():
                self.phase = "recovery"
                self._recovery_deadline = time.monotonic() + RECOVERY_BOUND
        if self.phase == "recovery" and time.monotonic() > self._recovery_deadline:
            return None
        if self.phase == "after" and self._after == CALLS_AFTER_RECOVERY:
            return None
        self._count += 1
        return self._count, len(self.name)

    def record(self, phase: str, started: float, expected: int, outcome: object) -> bool:
        """Record one call; True if it returned the right result."""
        finished = time.monotonic()
        if isinstance(outcome, BaseException):
            ok, text = False, type(outcome).__name__
        else:
            ok = outcome == expected
            text = "ok" if ok else f"wrong result {outcome!r} for {expected}"
        self.calls.append(Call(phase, text, finished - started, finished))
        if phase == "after":
            self._after += 1
        if ok:
            self._successes += 1
            if self._successes >= HEALTHY_CALLS:
                self.healthy.set()
            if phase == "recovery":
                self.phase = "after"
        elif self.faults.killed.is_set():
            self.failed_after_kill.set()
        return ok

    def pause(self) -> None:
        """After a failed call: wait a little (for the restart, while Redis is down)."""
        if self.phase == "stream":
            self.faults.restarted.wait(FAILURE_PAUSE)
        elif self.phase == "recovery":
            time.sleep(FAILURE_PAUSE)  # bounded by the recovery deadline

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for call in self.calls:
            key = f"{call.phase}:{call.outcome}"
            kinds[key] = kinds.get(key, 0) + 1
        return f"{self.name} {kinds}"


def run_sync_client(url: str, stream: CallStream) -> None:
    try:
        with Client(url, timeout=CALL_TIMEOUT) as client:
            calc = client.proxy("calculator")
            while (args := stream.next_args()) is not None:
                phase, started = stream.phase, time.monotonic()
                try:
                    outcome: object = calc.add(*args)
                except Exception as exc:
                    outcome = exc
                if not stream.record(phase, started, sum(args), outcome):
                    stream.pause()
    except BaseException as exc:
        stream.crash = exc


async def run_async_client(url: str, stream: CallStream) -> None:
    try:
        async with AsyncClient(url, timeout=CALL_TIMEOUT) as client:
            calc = client.proxy("calculator")
            while (args := stream.next_args()) is not None:
                phase, started = stream.phase, time.monotonic()
                try:
                    outcome: object = await calc.add(*args)
                except Exception as exc:
                    outcome = exc
                if not stream.record(phase, started, sum(args), outcome):
                    await asyncio.to_thread(stream.pause)
    except BaseException as exc:
        stream.crash = exc


@pytest.mark.parametrize(
    "receiving", ["--receive-in-threads", "--no-receive-in-threads"], ids=["threads", "loop"]
)
def test_redis_killed_and_restarted_under_a_stream_of_calls(
    fresh_redis: EmbeddedRedis, receiving: str
) -> None:
    url = fresh_redis.url
    faults = Faults()
    streams = [CallStream(f"sync-{n}", faults) for n in range(3)]
    streams.append(CallStream("async", faults))
    threads = [threading.Thread(target=run_sync_client, args=(url, s)) for s in streams[:3]]
    threads.append(threading.Thread(target=lambda: asyncio.run(run_async_client(url, streams[3]))))
    worker = WorkerProcess(["services.calculator", "--redis-url", url, receiving], cwd=REPOSITORY)
    with worker:
        try:
            for thread in threads:
                thread.start()
            for stream in streams:
                assert stream.healthy.wait(15), stream.summary()

            faults.killed_at = time.monotonic()
            faults.killed.set()
            fresh_redis.kill()
            worker.wait_for_line("cannot reach Redis", timeout=15)
            for stream in streams:  # every client has met the outage
                assert stream.failed_after_kill.wait(CALL_TIMEOUT + 5), stream.summary()
            fresh_redis.start()
            faults.restarted.set()
            worker.wait_for_line("connected to Redis", timeout=15)

            # Every client finishes on its own, well within the bounds of its phases.
            finish_by = time.monotonic() + RECOVERY_BOUND + CALLS_AFTER_RECOVERY * CALL_TIMEOUT
            for thread in threads:
                thread.join(max(finish_by - time.monotonic(), 0))
            assert not [s.name for s, t in zip(streams, threads, strict=True) if t.is_alive()]
        finally:
            faults.aborted.set()
            faults.restarted.set()
            for thread in threads:
                thread.join(30)
            if fresh_redis.process is None:
                fresh_redis.start()

        for stream in streams:
            assert stream.crash is None, f"{stream.name}: {stream.crash!r}"
            outcomes = {call.outcome for call in stream.calls}
            assert outcomes <= {"ok", *ALLOWED_FAILURES}, stream.summary()
            slowest = max(call.seconds for call in stream.calls)
            assert slowest <= CALL_TIMEOUT + 1, f"{stream.name}: a call took {slowest:.2f}s"
            before_kill = [c for c in stream.calls if c.finished_at < (faults.killed_at or 0)]
            assert len(before_kill) >= HEALTHY_CALLS
            assert {c.outcome for c in before_kill} == {"ok"}, stream.summary()
            recovery = [c for c in stream.calls if c.phase == "recovery"]
            assert recovery and recovery[-1].outcome == "ok", (
                f"no success within {RECOVERY_BOUND}s of the restart: {stream.summary()}"
            )
            after = [c.outcome for c in stream.calls if c.phase == "after"]
            assert after == ["ok"] * CALLS_AFTER_RECOVERY, stream.summary()

        assert worker.process is not None and worker.process.poll() is None
        worker.signal(signal.SIGTERM)
        assert worker.wait(15) == 0
    lines = worker.lines
    outages = [n for n, line in enumerate(lines) if "cannot reach Redis" in line]
    assert len(outages) == 1, worker.output
    assert "WARNING" in lines[outages[0]]
    reconnections = [n for n, line in enumerate(lines) if "connected to Redis" in line]
    assert reconnections and reconnections[0] > outages[0], worker.output
    assert "Traceback" not in worker.output


# -- 2. Garbage on the queue ---------------------------------------------------------

REPLY = "reply"  # an error reply on the message's reply key
DEAD_LETTER = "dead letter"  # an entry in rpc:dead:{calculator}
SKIPPED = "skipped"  # a notification (or an expired request): nothing written
ANY_OUTCOME = frozenset({REPLY, DEAD_LETTER, SKIPPED})
UNCHECKED = object()


@dataclass(frozen=True)
class Garbage:
    """A message to push, and what it may end in."""

    raw: bytes
    outcomes: frozenset[str] = ANY_OUTCOME
    reply_key: str | None = None  # where its reply must be, when that is known
    reply_id: object = UNCHECKED  # the id its (single) error reply must carry
    reason: str = ""  # part of its dead-letter reason

    def __repr__(self) -> str:  # keep failure reports readable when raw is huge
        shown = self.raw if len(self.raw) <= 300 else self.raw[:300] + b"..."
        return f"Garbage({shown!r} ({len(self.raw)} bytes), {sorted(self.outcomes)})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis's reports
        printer.text(repr(self))


@dataclass
class Ended:
    outcome: str
    reply_key: bytes | None = None
    reply: Any = None
    dead_letter: dict[str, Any] | None = None


@dataclass
class Served:
    """A worker taking one message at a time, a plain Redis connection, and a client."""

    worker: Worker
    connection: redis.Redis
    client: Client

    def push_and_follow(self, raw: bytes) -> Ended:
        """Push one message, then make a normal call; the message ended in exactly one way."""
        worker, connection = self.worker, self.connection
        before = asdict(worker.stats)
        dead_before = connection.llen(DEAD)
        keys_before = set(connection.keys("*"))
        connection.rpush(QUEUE, raw)
        # With concurrency=1 the message is handled and its outcome written before this
        # call is taken off the queue; the call also shows that the worker still serves.
        assert self.client.proxy("calculator").add(1, 2) == 3
        new_keys = set(connection.keys("*")) - keys_before - {DEAD.encode()}

        def delta() -> dict[str, int]:
            return {name: value - before[name] for name, value in asdict(worker.stats).items()}

        # The call's own reply is counted just after it is written.
        wait_until(lambda: delta()["replied"] >= 1 + len(new_keys), 10, "the call's reply counted")
        counts = delta()
        assert counts["received"] == 2, counts
        ended = {
            REPLY: counts["replied"] - 1,
            DEAD_LETTER: counts["dead_lettered"],
            SKIPPED: counts["notifications"] + counts["expired"],
        }
        assert sorted(ended.values()) == [0, 0, 1], f"ended in {ended} (stats {counts})"
        outcome = next(name for name, count in ended.items() if count)
        assert counts["rejected"] == 0 or outcome != SKIPPED, counts
        assert worker.ready.is_set() and not worker.stopped.is_set()

        result = Ended(outcome)
        entries = connection.lrange(DEAD, dead_before, -1)
        assert len(entries) == ended[DEAD_LETTER], entries
        if entries:
            result.dead_letter = decode_dead_letter(entries[0])
            if result.dead_letter.get("truncated"):  # far over the limit: its head is kept
                assert result.dead_letter["size"] == len(raw)
                assert result.dead_letter["raw"] == raw[:DEAD_LETTER_HEAD_BYTES]
            else:
                assert result.dead_letter["raw"] == raw
            assert result.dead_letter["queue"] == QUEUE
            assert result.dead_letter["reason"]
        if outcome == REPLY:
            assert len(new_keys) == 1, new_keys
            key = result.reply_key = new_keys.pop()
            assert connection.type(key) == b"list"
            assert connection.llen(key) == 1
            assert 0 < connection.pttl(key) <= worker.reply_ttl_ms
            result.reply = json.loads(connection.lindex(key, 0))  # type: ignore[arg-type]
            for response in result.reply if isinstance(result.reply, list) else [result.reply]:
                assert response["jsonrpc"] == "2.0", response
                assert "result" not in response and isinstance(response["error"]["code"], int)
        else:
            assert new_keys == set(), new_keys
        return result

    def check(self, case: Garbage) -> None:
        """From an empty database: ``case`` ends in one of the outcomes it allows."""
        self.connection.flushall()
        ended = self.push_and_follow(case.raw)
        assert ended.outcome in case.outcomes, f"{case!r} ended as {ended.outcome}"
        if case.reply_key is not None and ended.reply_key is not None:
            assert ended.reply_key == case.reply_key.encode()
        if case.reply_id is not UNCHECKED and ended.reply is not None:
            assert ended.reply["id"] == case.reply_id
        if case.reason and ended.dead_letter is not None:
            assert case.reason in ended.dead_letter["reason"]


@contextlib.contextmanager
def one_at_a_time(url: str, **options: Any) -> Iterator[Served]:
    with (
        serve_in_thread(calculator, url, concurrency=1, **options) as worker,
        redis.Redis.from_url(url) as connection,
        Client(url, timeout=5) as client,
    ):
        yield Served(worker, connection, client)


@pytest.fixture
def served(redis_url: str) -> Iterator[Served]:
    """One worker for all the examples of a test; each example starts from FLUSHALL."""
    with one_at_a_time(redis_url) as served:
        yield served


HUGE_LIMIT = 200_000  # max_message_bytes of the worker fed huge strings


@pytest.fixture
def served_with_a_limit(redis_url: str) -> Iterator[Served]:
    with one_at_a_time(redis_url, max_message_bytes=HUGE_LIMIT) as served:
        yield served


def garbage_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


def dumps(value: object) -> bytes:
    return json.dumps(value, allow_nan=False, ensure_ascii=False).encode()


def is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True


def request_object(method: object, params: object, request_id: object) -> dict[str, object]:
    return {"jsonrpc": "2.0", "method": method, "params": params, "id": request_id}


TEXT = st.text(st.characters(codec="utf-8"), max_size=16)
TOKENS = st.text(string.ascii_letters + string.digits, min_size=1, max_size=12)
# Ids a worker reads exactly: wider integers arrive as doubles (protocol.md §2), so an
# error reply's id could not be compared with the one sent.
EXACT_IDS = st.integers(-(2**63), 2**64 - 1)
REPLY_KEYS = TOKENS.map(lambda token: f"rpc:reply:garbage-{token}")
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
NOT_A_METHOD = TEXT.filter(lambda name: name not in calculator.functions)
# Params no calculator method takes: the wrong number, or names it does not have.
BAD_PARAMS = (
    st.lists(SCALARS, max_size=1)
    | st.lists(SCALARS, min_size=3, max_size=4)
    | st.dictionaries(TEXT.filter(lambda name: name not in ("a", "b")), SCALARS, min_size=1)
)


@st.composite
def invalid_requests(draw: st.DrawFn, request_id: object) -> dict[str, object]:
    """A request no worker can run: wrong member types, an unknown method, bad params."""
    variant = draw(st.sampled_from(["jsonrpc", "method", "params", "unknown", "arity"]))
    request = request_object("add", [1, 2], request_id)
    if variant == "jsonrpc":
        request["jsonrpc"] = draw(VALUES.filter(lambda value: value != "2.0"))
    elif variant == "method":
        request["method"] = draw(VALUES.filter(lambda value: not isinstance(value, str)))
    elif variant == "params":
        request["params"] = draw(SCALARS)
    elif variant == "unknown":
        request["method"] = draw(NOT_A_METHOD)
    else:
        request["params"] = draw(BAD_PARAMS)
    return request


# Random bytes.


def from_bytes(raw: bytes) -> Garbage:
    if is_json(raw):
        return Garbage(raw)
    return Garbage(raw, frozenset({DEAD_LETTER}), reason="not valid JSON")


@garbage_settings(30)
@given(case=st.binary(max_size=256).map(from_bytes))
@example(case=from_bytes(b""))
@example(case=from_bytes(b"\xff\xfe\x00"))
@example(case=from_bytes(b"[]"))
@example(case=from_bytes(b"{}"))
def test_random_bytes(served: Served, case: Garbage) -> None:
    served.check(case)


# Truncated requests and envelopes.


@st.composite
def truncated(draw: st.DrawFn) -> Garbage:
    """A valid envelope, bare request or bare batch, cut short: never valid JSON."""
    request = request_object("add", [draw(st.integers()), 2], draw(TOKENS))
    whole = draw(
        st.sampled_from(
            [
                dumps({"v": 1, "reply_to": draw(REPLY_KEYS), "request": request}),
                dumps({"v": 1, "reply_to": draw(REPLY_KEYS), "request": [request, request]}),
                dumps(request),
                dumps([request]),
            ]
        )
    )
    raw = whole[: draw(st.integers(0, len(whole) - 1))]
    return Garbage(raw, frozenset({DEAD_LETTER}), reason="not valid JSON")


@garbage_settings(25)
@given(case=truncated())
def test_truncated_messages(served: Served, case: Garbage) -> None:
    served.check(case)


# JSON of the wrong types.

A_REQUEST = request_object("add", [1, 2], 1)


@st.composite
def wrong_types(draw: st.DrawFn) -> Garbage:
    """Not an object, envelopes with bad members, requests nobody can run or answer."""
    reply_to = draw(REPLY_KEYS)
    request = request_object("add", [1, 2], draw(EXACT_IDS))
    variant = draw(
        st.sampled_from(
            [
                "scalar",
                "array",
                "object",
                "version",
                "reply_to",
                "deadline",
                "past deadline",
                "request",
                "bare",
                "no reply key",
                "batch in a batch",
                "notification",
            ]
        )
    )
    if variant == "scalar":  # bare, not a request, no reply key
        return Garbage(dumps(draw(SCALARS)), frozenset({DEAD_LETTER}))
    if variant == "array":
        items = st.lists(SCALARS | st.lists(SCALARS, max_size=2), max_size=4)
        return Garbage(dumps(draw(items)), frozenset({DEAD_LETTER}))
    if variant == "object":
        return Garbage(dumps(draw(st.dictionaries(TEXT, VALUES, max_size=4))))
    if variant == "version":
        version = draw(VALUES.filter(lambda v: not (type(v) is int and v == 1)))
        envelope = {"v": version, "reply_to": reply_to, "request": request}
        return Garbage(dumps(envelope), frozenset({REPLY}), reply_to, request["id"])
    if variant == "reply_to":
        bad = draw(VALUES.filter(lambda v: v is not None and not (isinstance(v, str) and v)))
        envelope = {"v": 1, "reply_to": bad, "request": request}
        return Garbage(dumps(envelope), frozenset({DEAD_LETTER}), reason="reply_to")
    if variant == "deadline":
        bad = draw(VALUES.filter(lambda v: v is not None and type(v) not in (int, float)))
        envelope = {"v": 1, "reply_to": reply_to, "deadline": bad, "request": request}
        return Garbage(dumps(envelope), frozenset({REPLY}), reply_to, request["id"])
    if variant == "past deadline":  # the caller has given up: skipped
        deadline = draw(st.floats(0, time.time() - 60) | st.integers(-(2**31), 0))
        envelope = {"v": 1, "reply_to": reply_to, "deadline": deadline, "request": request}
        return Garbage(dumps(envelope), frozenset({SKIPPED}))
    if variant == "request":  # the envelope is fine, what it carries is not a request
        payload = draw(
            SCALARS
            | st.lists(SCALARS, max_size=3)
            | st.dictionaries(TEXT, SCALARS, max_size=3)
            | invalid_requests(draw(st.integers()))
        )
        envelope = {"v": 1, "reply_to": reply_to, "request": payload}
        return Garbage(dumps(envelope), frozenset({REPLY}), reply_to)
    if variant == "bare":  # answered on the key its string id names
        request_id = draw(TOKENS)
        bare = draw(invalid_requests(request_id))
        return Garbage(dumps(bare), frozenset({REPLY}), request_id, request_id)
    if variant == "no reply key":  # a request with an id, and nowhere to answer it
        unanswerable = draw(
            st.sampled_from(
                [
                    {"v": 1, "request": request},
                    {"v": 1, "reply_to": None, "request": request},
                    request,  # bare, with a number for an id
                    {**request, "id": None},
                ]
            )
        )
        return Garbage(dumps(unanswerable), frozenset({DEAD_LETTER}), reason="reply key")
    notification = {"jsonrpc": "2.0", "method": draw(NOT_A_METHOD)}
    if variant == "batch in a batch":  # an array is not a request: its error reply is due
        inner = [notification]
        nested = draw(st.sampled_from([[inner], [inner, notification], {"request": [inner]}]))
        return Garbage(dumps(nested), frozenset({DEAD_LETTER}), reason="reply key")
    message = draw(
        st.sampled_from([notification, [notification, notification], {"request": notification}])
    )
    return Garbage(dumps(message), frozenset({SKIPPED}))


@garbage_settings(45)
@given(case=wrong_types())
@example(case=Garbage(dumps({"reply_to": "rpc:reply:e", "request": []}), frozenset({REPLY})))
@example(
    case=Garbage(
        dumps({"v": True, "reply_to": "rpc:reply:v", "request": A_REQUEST}),
        frozenset({REPLY}),
        "rpc:reply:v",
        1,
    )
)
@example(case=Garbage(dumps({"reply_to": "", "request": A_REQUEST}), frozenset({DEAD_LETTER})))
@example(case=Garbage(dumps({"jsonrpc": "2.0", "method": "add"}), frozenset({SKIPPED})))
@example(case=Garbage(b'[[{"jsonrpc":"2.0","method":"nope"}]]', frozenset({DEAD_LETTER})))
def test_json_of_the_wrong_types(served: Served, case: Garbage) -> None:
    served.check(case)


# Bare requests with string ids, which name their reply keys.


def with_string_id(request: dict[str, object], as_batch: bool = False) -> Garbage:
    request_id = request["id"]
    assert isinstance(request_id, str)
    raw = dumps([request, request_object("nope", [], 7)] if as_batch else request)
    if request_id.startswith("rpc:queue:") or len(request_id) > MAX_REPLY_KEY_LENGTH:
        return Garbage(raw, frozenset({DEAD_LETTER}), reason="reply key")
    return Garbage(raw, frozenset({REPLY}), request_id, UNCHECKED if as_batch else request_id)


@st.composite
def string_ids(draw: st.DrawFn) -> Garbage:
    """Bare requests whose string id names the reply key, some of which must be refused."""
    request_id = draw(
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=40).filter(lambda s: s != DEAD)
        | TEXT.map(lambda text: f"rpc:queue:{text}")
        | st.integers(MAX_REPLY_KEY_LENGTH - 3, MAX_REPLY_KEY_LENGTH + 3).map(lambda n: "k" * n)
    )
    return with_string_id(draw(invalid_requests(request_id)), draw(st.booleans()))


@garbage_settings(25)
@given(case=string_ids())
@example(case=with_string_id(request_object("nope", [], QUEUE)))
@example(case=with_string_id(request_object("nope", [], "rpc:queue:{other}"), as_batch=True))
@example(case=with_string_id(request_object("nope", [], "k" * MAX_REPLY_KEY_LENGTH)))
@example(case=with_string_id(request_object("nope", [], "k" * (MAX_REPLY_KEY_LENGTH + 1))))
def test_bare_requests_with_string_ids(served: Served, case: Garbage) -> None:
    served.check(case)


# Huge strings.

HUGE = ["id", "reply_to", "method", "params", "string", "bytes"]


def huge(variant: str, size: int, char: str = "x", reply_to: str = "rpc:reply:huge") -> Garbage:
    """A message with a string of ``size`` characters: 100 KB and more, sometimes over
    the worker's limit (then it is answered with an error if a reply key can be read,
    unless it is too large even to be read: protocol.unread_above)."""
    text = char * size
    if variant == "id":  # a reply key far too long
        return Garbage(dumps(request_object("add", [1, 2], text)), frozenset({DEAD_LETTER}))
    if variant == "reply_to":
        envelope = {"v": 1, "reply_to": text, "request": A_REQUEST}
        return Garbage(dumps(envelope), frozenset({DEAD_LETTER}))
    if variant in ("method", "params"):
        request = (
            request_object(text, [], 1) if variant == "method" else request_object("add", [text], 1)
        )
        raw = dumps({"v": 1, "reply_to": reply_to, "request": request})
        if len(raw) > unread_above(HUGE_LIMIT):
            return Garbage(raw, frozenset({DEAD_LETTER}))
        return Garbage(raw, frozenset({REPLY}), reply_to, 1)
    if variant == "string":
        return Garbage(dumps(text), frozenset({DEAD_LETTER}))
    return Garbage(b"\xff" * size, frozenset({DEAD_LETTER}))


@garbage_settings(12)
@given(
    case=st.builds(
        huge,
        st.sampled_from(HUGE),
        st.integers(100_000, 250_000),
        st.sampled_from("xé€"),
        REPLY_KEYS,
    )
)
@example(case=huge("method", 100_000))  # under the limit
@example(case=huge("params", HUGE_LIMIT))  # over it by a few bytes
def test_huge_strings(served_with_a_limit: Served, case: Garbage) -> None:
    served_with_a_limit.check(case)


# Deep nesting.

# A message nested up to this deep is parsed and answered on its reply key; deeper, a
# parser may give up (orjson stops at 1,024), and then no reply key is known.
ANSWERABLE_DEPTH = 1000
NESTING = ["bare", "envelope", "objects", "params"]


def deep(
    variant: str, depth: int, reply_to: str = "rpc:reply:deep", request_id: str = "d"
) -> Garbage:
    """Arrays or objects nested ``depth`` deep, bare or in an envelope or in params."""
    answerable = frozenset({REPLY} if depth <= ANSWERABLE_DEPTH - 2 else {REPLY, DEAD_LETTER})
    nested = "[" * depth + "]" * depth
    if variant == "bare":  # no reply key, at any depth
        return Garbage(nested.encode(), frozenset({DEAD_LETTER}))
    if variant == "envelope":
        raw = f'{{"v":1,"reply_to":"{reply_to}","request":{nested}}}'
        return Garbage(raw.encode(), answerable, reply_to)
    if variant == "objects":
        objects = '{"a":' * depth + "1" + "}" * depth
        raw = f'{{"v":1,"reply_to":"{reply_to}","request":{objects}}}'
        return Garbage(raw.encode(), answerable, reply_to)
    raw = f'{{"jsonrpc":"2.0","method":"add","params":[{nested}],"id":"{request_id}"}}'
    return Garbage(raw.encode(), answerable, request_id, request_id)


@garbage_settings(25)
@given(case=st.builds(deep, st.sampled_from(NESTING), st.integers(1, 5000), REPLY_KEYS, TOKENS))
@example(case=deep("bare", 300))
@example(case=deep("bare", 400))
@example(case=deep("bare", 1000))
@example(case=deep("bare", 1024))
@example(case=deep("bare", 1025))
@example(case=deep("bare", 5000))
@example(case=deep("envelope", 998))
@example(case=deep("envelope", 5000))
@example(case=deep("objects", 998))
@example(case=deep("params", 998))
@example(case=deep("params", 5000))
def test_deep_nesting(served: Served, case: Garbage) -> None:
    served.check(case)


# A reply key that is not a list.


def test_a_reply_key_holding_another_type_is_dead_lettered_and_left_alone(
    served: Served,
) -> None:
    """A bare request whose id names a string key: no reply can be pushed there."""
    served.connection.set("occupied", "precious")
    ended = served.push_and_follow(dumps(request_object("nope", [], "occupied")))
    assert ended.outcome == DEAD_LETTER
    assert served.connection.get("occupied") == b"precious"
    assert served.connection.ttl("occupied") == -1  # no expiry put on someone else's key


# -- 3. A reply nobody collects expires ------------------------------------------------


def the_reply_key(connection: redis.Redis) -> bytes:
    """The one reply key left behind by a call that gave up waiting."""
    found: list[bytes] = []

    def appeared() -> bool:
        found[:] = connection.keys("rpc:reply:*")
        return bool(found)

    wait_until(appeared, 5, "a reply key")
    assert len(found) == 1, found
    return found[0]


def test_an_uncollected_reply_has_a_ttl_within_the_workers_reply_ttl(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    reply_ttl = 30
    assert reply_ttl != DEFAULT_REPLY_TTL  # the worker's setting, not the default
    with (
        serve_in_thread(calculator, redis_url, reply_ttl=reply_ttl) as worker,
        Client(redis_url) as client,
    ):
        with pytest.raises(RpcTimeout):  # the reply comes half a second late
            client.proxy("calculator", timeout=0.5).sleep(1.0)
        key = the_reply_key(redis_connection)
        ttl_ms = redis_connection.pttl(key)
        assert (reply_ttl - 5) * 1000 < ttl_ms <= reply_ttl * 1000
        reply = json.loads(redis_connection.lindex(key, 0))  # type: ignore[arg-type]
        assert reply["result"] == 1.0
        wait_until(lambda: worker.stats.replied == 1, 2, "the reply counted")


def test_an_uncollected_reply_is_gone_after_the_reply_ttl(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    with (
        serve_in_thread(calculator, redis_url, reply_ttl=1) as worker,
        Client(redis_url) as client,
    ):
        with pytest.raises(RpcTimeout):  # the reply comes half a second late
            client.proxy("calculator", timeout=0.5).sleep(1.0)
        key = the_reply_key(redis_connection)
        assert 0 < redis_connection.pttl(key) <= 1000
        appeared = time.monotonic()
        wait_until(lambda: redis_connection.exists(key) == 0, 5, f"{key!r} to expire")
        assert time.monotonic() - appeared <= 1.5
        assert worker.stats.replied == 1
        assert client.proxy("calculator").add(2, 2) == 4  # and nothing else went wrong
