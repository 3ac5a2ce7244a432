"""docs/worker.md lists every option `rpc-worker --help` offers, and nothing else."""

from __future__ import annotations

import re

from rpc_redis.cli import worker_parser
from tests.conftest import REPOSITORY

ROW = re.compile(r"^\| `(--[a-z-]+)", re.MULTILINE)


def test_the_option_table_is_the_parsers() -> None:
    table = set(ROW.findall((REPOSITORY / "docs" / "worker.md").read_text()))
    offered = {
        action.option_strings[0]
        for action in worker_parser()._actions
        if action.option_strings and action.option_strings[0] not in ("-h", "--version")
    }
    assert table == offered
