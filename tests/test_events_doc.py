"""docs/events.md: its examples run, against a worker serving the service it shows,
and the startup line it quotes is the worker's."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from rpc_redis import Service, Worker
from rpc_redis.testing import serve_in_thread, wait_until
from tests.conftest import REPOSITORY
from tests.test_readme import EXAMPLE_URL, python_blocks, with_checks

PAGE = REPOSITORY / "docs" / "events.md"


def the_service() -> Service:
    [block] = [block for block in python_blocks(PAGE) if "Service(" in block]
    namespace: dict[str, Any] = {"__name__": "events_doc"}
    exec(compile(block, str(PAGE), "exec"), namespace)
    service = namespace["service"]
    assert isinstance(service, Service)
    return service


def test_the_startup_line_the_page_quotes_is_the_worker_s() -> None:
    line = Worker(the_service(), EXAMPLE_URL).describe()
    events = "shop events on [sms_replies, sms.* (pattern), orders (durable)]"
    assert events in line
    assert f"{line.split(' on redis://')[0]} on {EXAMPLE_URL}" in PAGE.read_text()


def test_the_page_examples_run(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    blocks = [block for block in python_blocks(PAGE) if EXAMPLE_URL in block]
    assert len(blocks) == 4
    checked: list[Any] = []

    def check(actual: Any, expected: Any) -> None:
        assert actual == expected
        checked.append(actual)

    caplog.set_level(logging.INFO, logger="shop")
    with serve_in_thread(the_service(), redis_url):
        for block in blocks:
            source, _ = with_checks(block.replace(EXAMPLE_URL, redis_url))
            namespace: dict[str, Any] = {"_check": check, "__name__": "events_doc"}
            exec(compile(source, str(PAGE), "exec"), namespace)
        wait_until(lambda: any("billing order 17" in r.getMessage() for r in caplog.records))
    assert checked == [1, 0, [1, 2, 3], [3, 2, 1], [3, 2, 1]]
    assert any(r.getMessage() == "ann replied to bob: hi" for r in caplog.records)
