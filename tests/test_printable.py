"""printable(): every value from a message, safe on one line of a log or a terminal."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rpc_redis.printable import DEFAULT_LIMIT, printable


def test_plain_text_is_shown_as_it_is() -> None:
    assert printable("calculator.add") == "calculator.add"
    assert printable("héllo wörld €") == "héllo wörld €"


def test_line_breaks_and_control_characters_are_escaped() -> None:
    assert printable("nope\n2026-01-01 INFO forged") == "nope\\n2026-01-01 INFO forged"
    assert printable("a\rb\tc\x1b[31md\x00") == "a\\rb\\tc\\x1b[31md\\x00"
    # Unicode's own line breaks, and a bidi override that turns a line around on screen.
    assert printable("a\u2028b\u2029c\u202ed\x85") == "a\\u2028b\\u2029c\\u202ed\\x85"


def test_a_backslash_is_escaped_so_that_an_escape_cannot_be_faked() -> None:
    assert printable("a\\nb") == "a\\\\nb"
    assert printable("a\\nb") != printable("a\nb")


def test_length_is_bounded_and_the_cut_marked() -> None:
    shown = printable("x" * 10_000)
    assert len(shown) == DEFAULT_LIMIT and shown.endswith("…")
    assert printable("x" * DEFAULT_LIMIT) == "x" * DEFAULT_LIMIT
    assert printable("\n" * 10_000, 20) == "\\n" * 9 + "\\…"
    assert len(printable("\n" * 10_000, 20)) == 20


def test_other_values_get_a_bounded_repr() -> None:
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    assert len(printable(deep)) <= DEFAULT_LIMIT
    assert len(printable(list(range(1_000_000)))) <= DEFAULT_LIMIT
    assert printable({"dividend": 1}) == "{'dividend': 1}"
    assert printable(ValueError("bad\nvalue")) == "bad\\nvalue"
    assert printable(KeyError()) == "KeyError"


@given(st.text(), st.integers(2, 300))
def test_the_result_is_always_one_printable_line_within_the_limit(text: str, limit: int) -> None:
    shown = printable(text, limit)
    assert shown.isprintable()
    assert len(shown) <= limit
