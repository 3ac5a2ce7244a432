"""docs/middleware.md: its examples run, against a real rpc-worker with the middleware
they show, and the code it shows is services/middleware.py as it is."""

from __future__ import annotations

import os
from typing import Any

from rpc_redis.testing import WorkerProcess
from tests.conftest import REPOSITORY
from tests.test_readme import EXAMPLE_URL, python_blocks, with_checks

PAGE = REPOSITORY / "docs" / "middleware.md"


def test_the_page_shows_the_example_module_as_it_is() -> None:
    module = (REPOSITORY / "services" / "middleware.py").read_text()
    assert module in python_blocks(PAGE)


def test_the_page_examples_run_against_a_worker_with_its_middleware(redis_url: str) -> None:
    blocks = [block for block in python_blocks(PAGE) if EXAMPLE_URL in block]
    assert len(blocks) == 2
    checked: list[Any] = []

    def check(actual: Any, expected: Any) -> None:
        assert actual == expected
        checked.append(actual)

    env = {**os.environ, "RPC_SHARED_TOKEN": "s3cret"}
    args = [
        "services.calculator",
        "--redis-url",
        redis_url,
        "--middleware",
        "services.middleware:Timing",
        "--middleware",
        "services.middleware:SharedToken",
    ]
    with WorkerProcess(args, cwd=REPOSITORY, env=env) as worker:
        for block in blocks:
            source, _ = with_checks(block.replace(EXAMPLE_URL, redis_url))
            namespace: dict[str, Any] = {"_check": check, "__name__": "middleware_doc"}
            exec(compile(source, str(PAGE), "exec"), namespace)
            if "client" in namespace and hasattr(namespace["client"], "close"):
                namespace["client"].close()
        assert checked == [3, 4001]
        worker.wait_for_line(r"calculator\.add took [\d.]+ ms: ok")
        worker.wait_for_line(r"calculator\.add took [\d.]+ ms: error 4001")
