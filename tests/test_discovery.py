"""rpc.discover: every service's OpenRPC document, from real rpc-worker processes,
validated against the OpenRPC meta-schema (fetched by `make test`, see the Makefile)."""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Optional

import jsonschema
import pytest
import referencing
import referencing.jsonschema

from rpc_redis import Client, Service
from rpc_redis.discovery import builtin_schema, openrpc_document, summary_lines
from rpc_redis.testing import WorkerProcess
from services.calculator import service as calculator
from services.cats import service as cats
from tests.conftest import REPOSITORY

# Where `make test` puts the meta-schemas it fetches from the npm registry (see the Makefile).
META_SCHEMAS = Path(sys.prefix) / "share" / "openrpc"
JSON_SCHEMA_TOOLS = "https://meta.json-schema.tools"  # the JSON Schema meta-schema's id


def load(name: str) -> Any:
    path = META_SCHEMAS / name
    assert path.exists(), f"{path} is missing: `make test` fetches it (see the Makefile)"
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def meta_schema() -> jsonschema.protocols.Validator:
    """The OpenRPC meta-schema, with the JSON Schema meta-schema its schemas must meet.
    Both name a draft of their own as $schema; they are draft-07 in every other way."""
    draft7 = referencing.jsonschema.DRAFT7
    tools = draft7.create_resource(load("json-schema-tools.json"))
    registry = referencing.Registry().with_resources(
        [(JSON_SCHEMA_TOOLS, tools), (JSON_SCHEMA_TOOLS + "/", tools)]
    )
    return jsonschema.Draft7Validator(
        load("openrpc.json"), registry=registry, format_checker=jsonschema.FormatChecker()
    )


def assert_valid(validator: jsonschema.protocols.Validator, document: dict[str, Any]) -> None:
    errors = sorted(validator.iter_errors(document), key=lambda error: list(error.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


@pytest.fixture(scope="module")
def documents(redis_server: Any) -> Iterator[dict[str, dict[str, Any]]]:
    """The documents real workers answer with, for every example and test service."""
    url = redis_server.url
    args = ["services.calculator", "services.cats", "tests.typed_service"]
    args += ["services.orders:billing", "services.sms", "--redis-url", url]
    with WorkerProcess(args, cwd=REPOSITORY), Client(url, timeout=5) as client:
        yield {
            name: client.call(name, "rpc.discover")
            for name in ("calculator", "cats", "typed", "loose", "billing", "sms_bot")
        }


@pytest.mark.parametrize("name", ["calculator", "cats", "typed", "loose", "billing", "sms_bot"])
def test_every_service_answers_rpc_discover_with_a_valid_openrpc_document(
    meta_schema: jsonschema.protocols.Validator,
    documents: dict[str, dict[str, Any]],
    name: str,
) -> None:
    document = documents[name]
    assert_valid(meta_schema, document)
    assert document["openrpc"] == "1.3.2"
    assert document["info"]["title"] == name


def test_the_meta_schema_rejects_what_is_not_openrpc(
    meta_schema: jsonschema.protocols.Validator, documents: dict[str, dict[str, Any]]
) -> None:
    document = documents["calculator"]
    method = document["methods"][0]
    bad_param = {**method, "params": [{"name": "a", "schema": {"type": 5}}]}
    for broken in (
        {**document, "methods": [{"name": "add"}]},  # no params
        {**document, "methods": [bad_param]},  # a schema that is not a JSON Schema
        {**document, "openrpc": "2.0.0"},
    ):
        assert list(meta_schema.iter_errors(broken))


def test_the_document_says_what_the_signatures_hints_and_docstrings_say(
    documents: dict[str, dict[str, Any]],
) -> None:
    methods = {method["name"]: method for method in documents["calculator"]["methods"]}
    assert sorted(methods) == ["add", "div", "mul", "sleep", "sub"]
    add = methods["add"]
    assert add["summary"] == "Add two numbers."
    assert add["params"] == [
        {"name": "a", "schema": {"type": "number"}, "required": True},
        {"name": "b", "schema": {"type": "number"}, "required": True},
    ]
    assert add["result"] == {"name": "result", "schema": {"type": "number"}}
    assert methods["div"]["errors"] == [{"code": 1001, "message": "Division by zero"}]
    assert "errors" not in add
    assert "rpc.discover" not in methods  # the library's own methods are not the service's


def test_models_become_components_and_defaults_are_shown(
    documents: dict[str, dict[str, Any]],
) -> None:
    typed = documents["typed"]
    assert typed["info"] == {"title": "typed", "version": "1.2.0", "description": "Typed params."}
    methods = {method["name"]: method for method in typed["methods"]}
    assert methods["add"]["params"][1] == {
        "name": "b",
        "schema": {"type": "number", "default": 0},
        "required": False,
    }
    assert methods["add"]["description"].endswith("Strings that read as numbers are numbers.")
    adopt = methods["adopt"]
    cat_schema = adopt["params"][0]["schema"]
    assert cat_schema["properties"]["age"] == {"minimum": 0, "title": "Age", "type": "integer"}
    assert adopt["params"][1]["schema"] == {"format": "date", "type": "string"}
    assert adopt["result"]["schema"]["properties"]["cat"] == {"$ref": "#/components/schemas/Cat"}
    assert set(typed["components"]["schemas"]) == {"Cat"}
    assert adopt["errors"] == [{"code": 4004, "message": "No such cat"}]
    assert methods["later"]["params"][1]["schema"] == {"items": {"type": "string"}, "type": "array"}


def test_without_pydantic_the_common_types_are_mapped_and_the_document_is_valid(
    meta_schema: jsonschema.protocols.Validator,
) -> None:
    for service in (calculator, cats):
        document = openrpc_document(service, use_pydantic=False)
        assert_valid(meta_schema, document)
        assert document == openrpc_document(service, use_pydantic=True)


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Point:
    x: float
    y: float = 0.0


@pytest.mark.parametrize(
    ("hint", "schema"),
    [
        (int, {"type": "integer"}),
        (Optional[str], {"anyOf": [{"type": "string"}, {"type": "null"}]}),  # noqa: UP045
        (int | None, {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
        (list[float], {"type": "array", "items": {"type": "number"}}),
        (dict[str, bool], {"type": "object", "additionalProperties": {"type": "boolean"}}),
        (tuple[int, str], {
            "type": "array",
            "prefixItems": [{"type": "integer"}, {"type": "string"}],
            "minItems": 2,
            "maxItems": 2,
        }),
        (Literal["a", "b"], {"enum": ["a", "b"]}),
        (Colour, {"enum": ["red", "blue"]}),
        (Point, {
            "type": "object",
            "title": "Point",
            "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
            "required": ["x"],
        }),
        (object, {}),
    ],
)  # fmt: skip
def test_the_builtin_schemas_of_common_hints(hint: Any, schema: dict[str, Any]) -> None:
    assert builtin_schema(hint) == schema


def test_a_method_with_hints_that_cannot_be_resolved_is_still_described() -> None:
    service = Service("vague")

    @service.method
    def odd(thing: NoSuchType, count=3):  # type: ignore[no-untyped-def]  # noqa: F821
        return thing

    [method] = openrpc_document(service)["methods"]
    assert method["params"] == [
        {"name": "thing", "schema": {}, "required": True},
        {"name": "count", "schema": {"default": 3}, "required": False},
    ]
    assert "summary" not in method


def test_the_summary_for_people_lists_each_method_with_its_types(
    documents: dict[str, dict[str, Any]],
) -> None:
    lines = summary_lines(documents["calculator"])
    assert lines[0] == "calculator 0.0.0"
    assert "  add(a: number, b: number) -> number" in lines
    assert "      Add two numbers." in lines
    assert "      error 1001: Division by zero" in lines
    typed = summary_lines(documents["typed"])
    assert "  add(a: number, b: number = 0) -> number" in typed
    assert "  adopt(cat: Cat, on: string) -> Adoption" in typed


def test_the_document_lists_subscriptions_durable_consumers_and_streaming_methods(
    documents: dict[str, dict[str, Any]],
) -> None:
    """A service of event handlers only answers rpc.discover too (on its own queue)."""
    [subscription] = documents["sms_bot"]["x-events"]["subscriptions"]
    assert subscription["channel"] == "sms_replies"
    assert subscription["redisChannel"] == "rpc:channel:sms_replies"
    assert subscription["handler"] == "relay" and subscription["data"]["type"] == "object"
    assert documents["sms_bot"]["methods"] == []
    [consumer] = documents["billing"]["x-events"]["consumers"]
    assert {key: consumer[key] for key in ("topic", "stream", "group", "handler")} == {
        "topic": "orders",
        "stream": "rpc:stream:{orders}",
        "group": "billing",
        "handler": "bill",
    }
    assert "x-events" not in documents["cats"]  # none: only methods
    methods = {method["name"]: method for method in documents["cats"]["methods"]}
    assert methods["kittens"]["x-streaming"] is True
    assert methods["kittens"]["result"]["schema"]["type"] == "object"  # one item's schema
    assert "x-streaming" not in methods["receive"]


def test_a_pattern_subscription_is_described_with_the_glob_the_worker_uses() -> None:
    service = Service("patterns")

    @service.subscribe(pattern="sms.*")
    def on_sms(message: str) -> None:
        """Every SMS channel."""

    [subscription] = openrpc_document(service)["x-events"]["subscriptions"]
    assert subscription == {
        "pattern": "sms.*",
        "redisPattern": "rpc:channel:sms.*",
        "handler": "on_sms",
        "data": {"type": "string"},
        "summary": "Every SMS channel.",
    }
