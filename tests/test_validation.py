"""Typed params, checked when asked: a real rpc-worker serving tests/typed_service.py."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest

from rpc_redis import Client, InternalError, InvalidParams, RpcError, Service
from rpc_redis.testing import WorkerProcess
from tests.conftest import REPOSITORY


@pytest.fixture(scope="module")
def client(redis_server: Any) -> Iterator[Client]:
    args = ["tests.typed_service", "--redis-url", redis_server.url]
    with WorkerProcess(args, cwd=REPOSITORY), Client(redis_server.url, timeout=5) as client:
        yield client


def invalid_params(call: Any, *args: Any, **kwargs: Any) -> Any:
    with pytest.raises(InvalidParams) as raised:
        call(*args, **kwargs)
    assert raised.value.code == -32602
    return raised.value.data


def test_params_are_converted_to_their_hints(client: Client) -> None:
    typed = client.proxy("typed")
    assert typed.add(1, "2.5") == 3.5
    assert typed.add(a="4") == 4.0
    assert typed.later("3", ["a", "b"]) == {"a": 3, "b": 3}


def test_a_wrong_type_is_invalid_params_naming_the_parameter_and_why(client: Client) -> None:
    data = invalid_params(client.proxy("typed").add, "a", 1)
    assert data["param"] == "a"
    assert data["reason"] == "Input should be a valid number, unable to parse string as a number"
    assert data["type"] == "float_parsing"
    data = invalid_params(client.proxy("typed").later, 1, ["x", 2])
    assert data["param"] == "names" and data["loc"] == ["names", 1]


def test_missing_and_extra_params_are_invalid_params_too(client: Client) -> None:
    typed = client.proxy("typed")
    assert invalid_params(typed.add)["param"] == "a"
    assert invalid_params(typed.add)["reason"] == "Missing required argument"
    extra = invalid_params(typed.add, 1, 2, 3)
    assert (extra["param"], extra["reason"]) == (2, "Unexpected positional argument")
    data = invalid_params(typed.add, a=1, c=2)
    assert [(e["param"], e["reason"]) for e in data["errors"]] == [
        ("c", "Unexpected keyword argument")
    ]


def test_every_problem_is_listed(client: Client) -> None:
    data = invalid_params(client.proxy("typed").adopt, {"name": "", "age": -1}, "someday")
    assert [(e["param"], e.get("loc"), e["type"]) for e in data["errors"]] == [
        ("cat", ["cat", "name"], "string_too_short"),
        ("cat", ["cat", "age"], "greater_than_equal"),
        ("on", None, "date_from_datetime_parsing"),
    ]


def test_pydantic_models_are_params_and_results(client: Client) -> None:
    adopted = client.proxy("typed").adopt({"name": "Tom", "age": "3"}, "2026-01-02")
    assert adopted == {"cat": {"name": "Tom", "age": 3}, "on": "2026-01-02"}
    with pytest.raises(RpcError) as raised:
        client.proxy("typed").adopt({"name": "nobody", "age": 1}, "2026-01-02")
    assert (raised.value.code, raised.value.data) == (4004, "nobody")


def test_validation_is_per_method_where_the_service_does_not_ask(client: Client) -> None:
    loose = client.proxy("loose")
    with pytest.raises(InternalError):  # as without validation: the handler's TypeError
        loose.add_loose("a", 1)
    assert invalid_params(loose.add_strict, "a", 1)["param"] == "a"
    assert loose.add_strict("1", 2) == 3.0


def test_validation_without_pydantic_is_refused_when_the_service_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pydantic" else real(name)
    )
    with pytest.raises(ImportError, match=r"pip install 'rpc-redis\[validation\]'"):
        Service("strict", validate=True)
    service = Service("lenient")

    def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(ImportError, match=r"lenient\.add asks for validation"):
        service.method(validate=True)(add)
