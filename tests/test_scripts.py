"""The worker's Lua scripts are sent compacted: the code of each file, without its
comments, runs as the file does."""

from __future__ import annotations

from importlib import resources

import redis

from rpc_redis.worker import scripts


def test_compact_keeps_the_code_and_drops_comments_blank_lines_and_indentation() -> None:
    source = "-- why\n\nlocal a = 1  -- kept: code before it\n  if a then\n    return a\n  end\n"
    assert (
        scripts.compact(source) == "local a = 1  -- kept: code before it\nif a then\nreturn a\nend"
    )


def test_every_script_compacted_is_valid_lua_that_redis_loads(
    redis_connection: redis.Redis,
) -> None:
    names = [
        path.name.removesuffix(".lua")
        for path in (resources.files("rpc_redis.worker") / "lua").iterdir()
        if path.name.endswith(".lua")
    ]
    assert {"push_reply", "recover", "push_items", "claim_events", "forget_consumers"} <= set(names)
    for name in names:
        text = scripts.load(name)
        assert "--" not in text.splitlines()[0]
        assert redis_connection.script_load(text)  # compiles: no line lost its meaning
