"""JSON as the protocol writes and reads it."""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    """Serialise to compact UTF-8 JSON; stdlib fallback for integers wider than 64 bits
    (and for nesting deeper than orjson's 255 levels). Raises TypeError or ValueError
    for what cannot be serialised, a value nested past the recursion limit included."""
    try:
        return orjson.dumps(value)
    except TypeError:
        try:
            return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        except RecursionError:
            raise ValueError("nested too deeply to serialise") from None


def loads(data: bytes | str) -> Any:
    """Parse strict JSON (no NaN, no Infinity, valid UTF-8); raises ValueError."""
    return orjson.loads(data)
