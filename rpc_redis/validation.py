"""Typed params, checked when asked: a method's type hints enforced by pydantic.

``Service("x", validate=True)`` (or ``@service.method(validate=True)``) checks and
converts each call's params against the function's type hints before it runs, as
pydantic does (``"2"`` for an ``int`` is 2, ``"x"`` is an error): a param that does not
fit is error -32602 naming the parameter and the reason, never -32603 from deep inside
the handler. Results go out through the return annotation, so a pydantic model (or a
dataclass, a datetime) is sent as JSON. Unvalidated methods never come here.

pydantic is an optional extra (``pip install 'rpc-redis[validation]'``), imported only
by a service that asks for validation.
"""

from __future__ import annotations

import importlib.util
import inspect
import typing
from collections.abc import Callable
from typing import Any

from .errors import InvalidParams

INSTALL_HINT = "pip install 'rpc-redis[validation]'"


def require_pydantic(what: str) -> None:
    """Refuse, at registration, a validation that could never run: ImportError naming
    the extra, which ``rpc-worker`` reports in one line and exit 2."""
    if importlib.util.find_spec("pydantic") is None:
        raise ImportError(f"{what} asks for validation, which needs pydantic: {INSTALL_HINT}")


class ParamsValidator:
    """One function's params check and result conversion, built once per worker.

    Built after the service's module is imported, so type hints naming classes defined
    below the function resolve.
    """

    def __init__(self, func: Callable[..., Any]) -> None:
        import pydantic

        self._errors = pydantic.ValidationError
        signature = inspect.signature(func, eval_str=True)
        self._positions = [
            parameter.name
            for parameter in signature.parameters.values()
            if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        ]
        self._check = pydantic.validate_call(validate_return=False)(_arguments_of(func, signature))
        annotation = signature.return_annotation
        self._result: Any = (
            None if annotation is signature.empty else pydantic.TypeAdapter(annotation)
        )

    def params(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The params converted to the hints' types, as ``(args, kwargs)``; InvalidParams
        naming each parameter that does not fit, and why."""
        try:
            return self._check(*args, **kwargs)
        except self._errors as exc:
            problems = [self._problem(error) for error in exc.errors(include_url=False)]
            data = {**problems[0], "errors": problems}
            raise InvalidParams(data=data) from None

    def result(self, value: Any) -> Any:
        """The result as JSON values, as the return annotation serialises it."""
        from pydantic_core import to_jsonable_python

        if self._result is not None:
            try:
                return self._result.dump_python(value, mode="json", warnings=False)
            except Exception:  # not of the declared type: serialised as what it is
                pass
        return to_jsonable_python(value)

    def _problem(self, error: Any) -> dict[str, Any]:
        """One parameter's problem: its name (or position), where in it, and why."""
        location = list(error.get("loc", ()))
        head = location[0] if location else None
        if isinstance(head, int) and head < len(self._positions):
            head = self._positions[head]
        if location:
            location[0] = head
        problem: dict[str, Any] = {"param": head, "reason": error.get("msg", "")}
        if len(location) > 1:
            problem["loc"] = location
        problem["type"] = error.get("type", "")
        return problem


def _arguments_of(func: Callable[..., Any], signature: inspect.Signature) -> Callable[..., Any]:
    """A function with ``func``'s parameters and resolved hints that returns the
    arguments it is given: what pydantic validates, without calling ``func`` itself
    (which may be async, or need running on another thread)."""

    def arguments(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return args, kwargs

    hints = typing.get_type_hints(func, include_extras=True)
    hints.pop("return", None)
    arguments.__signature__ = signature.replace(  # type: ignore[attr-defined]
        return_annotation=signature.empty
    )
    arguments.__annotations__ = hints
    arguments.__name__ = getattr(func, "__name__", "method")
    arguments.__qualname__ = getattr(func, "__qualname__", arguments.__name__)
    arguments.__module__ = getattr(func, "__module__", __name__)
    return arguments
