"""Service dispatch without Redis: the quick check of params against jsonrpcserver's own."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from rpc_redis import Service
from rpc_redis.service import ParamsShape
from rpc_redis.worker.dispatch import Dispatcher


def two(a: int, b: int) -> int:
    return a + b


def with_default(a: int, b: int = 2) -> int:
    return a + b


def nothing() -> int:
    return 0


def keyword_only(a: int, *, b: int) -> int:
    return a + b


def positional_only(a: int, /, b: int) -> int:
    return a + b


def var_args(a: int, *rest: int) -> int:
    return a + sum(rest)


def var_kwargs(a: int, **rest: int) -> int:
    return a + sum(rest.values())


FUNCTIONS = [two, with_default, nothing, keyword_only, positional_only, var_args, var_kwargs]
PARAMS: list[Any] = [
    [],
    [1],
    [1, 2],
    [1, 2, 3],
    {},
    {"a": 1},
    {"a": 1, "b": 2},
    {"b": 2},
    {"a": 1, "c": 3},
    {"a": 1, "b": 2, "c": 3},
    "not params",
    None,
]


def binds(func: Any, params: Any) -> bool:
    args, kwargs = (params, {}) if isinstance(params, list) else ([], params)
    try:
        inspect.signature(func).bind(*args, **kwargs)
    except TypeError:
        return False
    return True


@pytest.mark.parametrize("func", FUNCTIONS, ids=lambda func: func.__name__)
def test_the_quick_check_vouches_only_for_params_that_bind(func: Any) -> None:
    shape = ParamsShape(func)
    for params in PARAMS:
        if shape.fits(params):
            assert isinstance(params, (list, dict)) and binds(func, params), params


@pytest.mark.parametrize("func", [two, with_default, nothing], ids=lambda func: func.__name__)
def test_the_quick_check_vouches_for_every_fit_of_a_plain_signature(func: Any) -> None:
    shape = ParamsShape(func)
    for params in PARAMS:
        if isinstance(params, (list, dict)):
            assert shape.fits(params) is binds(func, params), params


def served(func: Any) -> Service:
    service = Service("quick")
    service.method(func)
    return service


def request(func: Any, params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": func.__name__, "params": params, "id": 7}


@pytest.mark.parametrize("func", FUNCTIONS, ids=lambda func: func.__name__)
def test_both_dispatches_answer_as_the_signature_allows(func: Any) -> None:
    """Whether the quick check or jsonrpcserver decides, a call that binds gets its
    result and one that does not gets -32602, in a thread and on the event loop."""
    service = served(func)
    for params in PARAMS:
        if not isinstance(params, (list, dict)):
            continue
        dispatcher = Dispatcher(service)
        in_thread = dispatcher.dispatch_in_thread(request(func, params))
        on_loop = asyncio.run(dispatcher.dispatch(request(func, params)))
        assert in_thread == on_loop, params
        if binds(func, params):
            args, kwargs = (params, {}) if isinstance(params, list) else ([], params)
            assert in_thread == {"jsonrpc": "2.0", "result": func(*args, **kwargs), "id": 7}
        else:
            assert in_thread["error"]["code"] == -32602, params
