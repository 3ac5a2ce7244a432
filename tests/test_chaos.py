"""The chaos run (bench/chaos.py) in a short configuration: nothing lost, nothing wrong."""

from __future__ import annotations

import re

from tests.conftest import module_output


def test_short_chaos_run_loses_no_call() -> None:
    report = module_output("bench.chaos", "--duration", "8", "--kill-every", "2", timeout=120)
    assert re.search(r"^worker kills: [1-9]\d*, Redis restarts: 1$", report, re.M), report
    assert re.search(r"^lost: 0$", report, re.M)
    assert re.search(r"^wrong: 0$", report, re.M)
    answered = int(re.search(r"^answered: (\d+)$", report, re.M)[1])  # type: ignore[index]
    assert answered > 100
    assert "keys left without expiry (undocumented): none" in report
