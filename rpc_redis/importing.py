"""Importing a user's module (services, middleware) so that its failures can be fixed.

A module that is not there is one line (``No module named 'services.calculatr'``). A
module that fails while it runs (a SyntaxError, an ImportError of its own, any
exception) is :class:`UserModuleError`, whose message is the traceback from the
user's code, file and line first, without the import machinery's frames or ours.
"""

from __future__ import annotations

import importlib
import traceback
from pathlib import Path
from types import ModuleType, TracebackType

_OURS = str(Path(__file__).resolve().parent)
_IMPORTLIB = str(Path(importlib.__file__).resolve().parent)


class UserModuleError(ImportError):
    """A user's module raised while it was imported; the message is its traceback."""


def import_user_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise  # the module named (or its package) is not there: one line says so
        raise UserModuleError(_failure(name, exc)) from exc
    except Exception as exc:
        raise UserModuleError(_failure(name, exc)) from exc


def _failure(name: str, exc: BaseException) -> str:
    lines = traceback.format_exception(type(exc), exc, _users_frames(exc.__traceback__))
    return f"importing {name} failed:\n" + "".join(lines).rstrip("\n")


def _users_frames(tb: TracebackType | None) -> TracebackType | None:
    """The traceback from the first frame that is neither importlib's nor ours."""
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not filename.startswith(("<frozen importlib", _IMPORTLIB, _OURS)):
            return tb
        tb = tb.tb_next
    return None
