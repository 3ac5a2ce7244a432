"""Values from messages, made safe to show on one line of a log or a terminal.

Whoever can push onto a queue chooses method names, ids, reply keys, params and the
text of the errors they cause. Shown as they are, a newline in one forges a log line
and an escape sequence rewrites a terminal. Every such value goes through
:func:`printable` on its way to a person: the worker's log lines and ``rpc-admin``.
"""

from __future__ import annotations

import os
import reprlib
import traceback
from typing import Any

# Characters of one value in a log line: enough to recognise it, too few to flood a log.
DEFAULT_LIMIT = 200
_ESCAPES_IN_REPR = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ESCAPES = {"\\": "\\\\", **_ESCAPES_IN_REPR}


def printable(value: Any, limit: int = DEFAULT_LIMIT) -> str:
    """``value`` as at most ``limit`` printable characters on one line.

    Text is shown as it is, except that a backslash, control characters and every other
    character Unicode does not call printable (line and paragraph separators, bidi
    overrides...) are written as Python escapes; a cut is marked with "…". Anything
    else is shown by a bounded repr (its backslashes are its own escapes), so a huge or
    deeply nested value costs little.
    """
    if isinstance(value, str):
        text, escapes = value, _ESCAPES
    elif isinstance(value, BaseException):
        text, escapes = str(value) or type(value).__name__, _ESCAPES
    else:
        text, escapes = _bounded.repr(value), _ESCAPES_IN_REPR
    head = text[: limit + 1]
    if head.isprintable() and not (escapes is _ESCAPES and "\\" in head):
        escaped = head
    else:
        escaped = "".join(escapes.get(char) or _escape(char) for char in head)
    if len(text) <= limit and len(escaped) <= limit:
        return escaped
    return escaped[: limit - 1] + "…"


def printable_exception(exc: BaseException, frames: int = 6) -> str:
    """An unexpected exception on one line: its type, its text made :func:`printable`,
    and where it was raised (the innermost ``frames``, outermost first), so that a log
    keeps one line per fault; a traceback would carry the text unescaped."""
    stack = traceback.extract_tb(exc.__traceback__)[-frames:]
    where = " > ".join(
        f"{os.path.basename(frame.filename)}:{frame.lineno} {frame.name}" for frame in stack
    )
    text = f"{type(exc).__name__}: {printable(exc)}"
    return f"{text} (at {where})" if where else text


def _escape(char: str) -> str:
    if char.isprintable():
        return char
    return repr(char)[1:-1]  # \x1b, \u2028, \U0010ffff


def _bounded_repr() -> reprlib.Repr:
    shown = reprlib.Repr()
    shown.maxlevel = 4
    shown.maxstring = shown.maxother = DEFAULT_LIMIT
    shown.maxlist = shown.maxtuple = shown.maxdict = shown.maxset = 8
    return shown


_bounded = _bounded_repr()
