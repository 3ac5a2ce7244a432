"""Every python example in README.md runs, and every `expr  # value` line holds."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rpc_redis.testing import serve_in_thread
from services.calculator import service as calculator
from tests.conftest import REPOSITORY

README = REPOSITORY / "README.md"
EXAMPLE_URL = "redis://localhost:6379/0"
CHECKED_LINE = re.compile(r"^(?P<indent>\s*)(?P<expression>\S.*?)\s+# (?P<expected>.+)$")


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def with_checks(source: str) -> tuple[str, int]:
    """Turn `expr  # literal` lines into recorded checks; count how many there are."""
    lines, count = [], 0
    for line in source.splitlines():
        match = CHECKED_LINE.match(line)
        if match and is_expression(match["expression"]) and is_literal(match["expected"]):
            count += 1
            line = f"{match['indent']}_check(({match['expression']}), {match['expected']})"
        lines.append(line)
    return "\n".join(lines), count


def is_expression(text: str) -> bool:
    try:
        ast.parse(text, mode="eval")
    except SyntaxError:
        return False
    return True


def is_literal(text: str) -> bool:
    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return False
    return True


def test_readme_python_examples_run(redis_url: str) -> None:
    blocks = python_blocks(README)
    assert len(blocks) >= 4
    checked: list[tuple[Any, Any]] = []

    def check(actual: Any, expected: Any) -> None:
        assert actual == expected
        checked.append((actual, expected))

    expected_checks = 0
    namespace: dict[str, Any] = {"_check": check, "__name__": "readme"}
    with serve_in_thread(calculator, redis_url):
        for block in blocks:
            source, count = with_checks(block.replace(EXAMPLE_URL, redis_url))
            expected_checks += count
            exec(compile(source, str(README), "exec"), namespace)
        namespace["test_hello"](redis_url)  # the "Testing your services" example
    assert expected_checks >= 9  # the README has nine `expr  # value` lines
    assert len(checked) == expected_checks


@pytest.mark.parametrize("page", ["worker.md", "reliability.md"])
def test_guide_python_examples_run(page: str) -> None:
    from rpc_redis import Service

    blocks = python_blocks(REPOSITORY / "docs" / page)
    assert blocks
    for block in blocks:
        namespace: dict[str, Any] = {"__name__": "guide"}
        exec(compile(block, f"docs/{page}", "exec"), namespace)
        services = [value for value in namespace.values() if isinstance(value, Service)]
        assert services, "each example defines a Service"


def test_the_testing_example_runs_in_a_project_of_its_own(tmp_path: Path) -> None:
    """The README's "Testing your services" example, as a user's project would hold it:
    nothing of this repository importable, and no warning in the test output."""
    [block] = [block for block in python_blocks(README) if "pytest_plugins" in block]
    conftest, test_module = block.split("# test_greeter.py\n")
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_greeter.py").write_text(test_module)
    # As the README says: pytest-asyncio asks every project to choose its loop scope.
    ini = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
    (tmp_path / "pytest.ini").write_text(ini)
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-W", "error", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert "warning" not in done.stdout.lower(), done.stdout
