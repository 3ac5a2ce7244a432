"""docs/observability.md: its Python examples run, its describe output is what the
library prints, and its console session runs against a real rpc-worker."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from rpc_redis import Service
from rpc_redis.discovery import openrpc_document, summary_lines
from rpc_redis.testing import WorkerProcess, serve_in_thread
from tests.conftest import REPOSITORY
from tests.test_protocol_doc import parse_sessions, run_session, session_mismatches
from tests.test_readme import EXAMPLE_URL, python_blocks, with_checks

PAGE = REPOSITORY / "docs" / "observability.md"


def run_block(block: str, url: str, namespace: dict[str, Any]) -> int:
    """Run one example; how many ``expr  # value`` checks held."""
    checked: list[Any] = []

    def check(actual: Any, expected: Any) -> None:
        assert actual == expected
        checked.append(actual)

    source, count = with_checks(block.replace(EXAMPLE_URL, url))
    namespace["_check"] = check
    exec(compile(source, str(PAGE), "exec"), namespace)
    assert len(checked) == count
    return count


def services_in(namespace: dict[str, Any]) -> list[Service]:
    return [value for value in namespace.values() if isinstance(value, Service)]


def test_the_python_examples_run(redis_url: str) -> None:
    blocks = python_blocks(PAGE)
    assert len(blocks) == 4
    shop: dict[str, Any] = {"__name__": "observability_doc"}
    run_block(blocks[0], redis_url, shop)
    [described] = services_in(shop)
    shown = re.search(r"```text\n(shop 2\.1\.0\n.*?)```", PAGE.read_text(), re.DOTALL)
    assert shown is not None
    assert "\n".join(summary_lines(openrpc_document(described))) + "\n" == shown.group(1)

    shelter: dict[str, Any] = {"__name__": "observability_doc"}
    run_block(blocks[1], redis_url, shelter)
    with serve_in_thread(services_in(shelter), redis_url):
        assert run_block(blocks[2], redis_url, {"__name__": "observability_doc"}) == 3
    assert run_block(blocks[3], redis_url, {"__name__": "observability_doc"}) == 3


def test_the_console_session_prints_what_the_page_shows(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = parse_sessions(PAGE.read_text(encoding="utf-8"))
    assert commands
    monkeypatch.setenv("RPC_REDIS_URL", redis_url)
    args = ["services.calculator", "--redis-url", redis_url]
    with WorkerProcess(args, cwd=REPOSITORY):
        outputs = run_session(commands, Path(sys.executable).parent)  # rpc-admin's
    mismatches = session_mismatches("observability.md", commands, outputs)
    assert not mismatches, "\n".join(mismatches)


def test_the_events_describe_output_is_what_rpc_admin_describe_prints() -> None:
    from services.orders import billing
    from services.sms import bot

    shown = re.search(r"```text\n(billing 0\.0\.0\n.*?)```", PAGE.read_text(), re.DOTALL)
    assert shown is not None
    printed = [*summary_lines(openrpc_document(billing)), *summary_lines(openrpc_document(bot))]
    assert "\n".join(printed) + "\n" == shown.group(1)
