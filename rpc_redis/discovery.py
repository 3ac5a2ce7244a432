"""Discovery: a service's OpenRPC document, from its functions as they are written.

Every worker answers ``rpc.discover`` with an `OpenRPC 1.3
<https://spec.open-rpc.org/>`_ document built here: each method's params (name, JSON
Schema, required, default) from its signature and type hints, its result's schema, a
summary and description from its docstring, and the errors it declares
(``@service.method(errors=[...])``). With pydantic installed, schemas are pydantic's
(models become ``components.schemas``); without it, the common types are mapped here.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import logging
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from . import protocol
from .events import wire
from .service import Method, Service

OPENRPC_VERSION = "1.3.2"
SCHEMA_REFERENCE = "#/components/schemas/{model}"

logger = logging.getLogger("rpc_redis.discovery")

Schema = dict[str, Any]


def openrpc_document(service: Service, *, use_pydantic: bool | None = None) -> dict[str, Any]:
    """The service's OpenRPC document. ``use_pydantic`` None: if it is installed."""
    schemas = SchemaMaker(_pydantic_available() if use_pydantic is None else use_pydantic)
    info: dict[str, Any] = {"title": service.name, "version": service.version}
    if service.description:
        info["description"] = service.description
    document: dict[str, Any] = {
        "openrpc": OPENRPC_VERSION,
        "info": info,
        "methods": [method_object(method, schemas) for method in service.methods.values()],
    }
    document.update(events_and_streams(service, schemas))
    if schemas.components:
        document["components"] = {"schemas": schemas.components}
    return document


def events_and_streams(service: Service, schemas: SchemaMaker) -> dict[str, Any]:
    """What a service listens to, as the ``x-events`` extension (OpenRPC lets a document
    carry ``x-`` members): its pub/sub subscriptions (a channel or a pattern, and the
    Redis channel or glob the worker subscribes to) and its durable consumers (a topic,
    its stream and the service's consumer group), each with its handler and the schema
    of the event's data it takes. Its streaming methods are marked on the methods
    themselves (``x-streaming``); nothing here if it has no event handlers."""
    subscriptions = []
    for subscription in service.subscriptions:
        described: dict[str, Any] = {}
        if subscription.channel is not None:
            described["channel"] = subscription.channel
            described["redisChannel"] = wire.channel_name(subscription.channel)
        else:
            assert subscription.pattern is not None
            described["pattern"] = subscription.pattern
            described["redisPattern"] = wire.channel_pattern(subscription.pattern)
        subscriptions.append({**described, **_event_handler(subscription.handler, schemas)})
    consumers = [
        {
            "topic": topic,
            "stream": wire.stream_key(topic),
            "group": service.name,
            **_event_handler(consumer.handler, schemas),
        }
        for topic, consumer in service.consumers.items()
    ]
    events: dict[str, Any] = {}
    if subscriptions:
        events["subscriptions"] = subscriptions
    if consumers:
        events["consumers"] = consumers
    return {"x-events": events} if events else {}


def _event_handler(handler: Method, schemas: SchemaMaker) -> dict[str, Any]:
    """An event handler: its name, summary, and the schema of the data it takes."""
    hints = _hints(handler)
    parameters = [
        parameter
        for parameter in inspect.signature(handler.func).parameters.values()
        if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ]
    hint = hints.get(parameters[0].name, Any) if parameters else Any
    described: dict[str, Any] = {"handler": handler.name, "data": schemas.of(hint)}
    docstring = inspect.getdoc(handler.func)
    if docstring:
        described["summary"] = docstring.split("\n\n", 1)[0].replace("\n", " ")
    return described


def method_object(method: Method, schemas: SchemaMaker) -> dict[str, Any]:
    """One method: params, result, summary, description, paramStructure, errors."""
    signature = inspect.signature(method.func)
    hints = _hints(method)
    params = []
    kinds = set()
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        kinds.add(parameter.kind)
        params.append(_param(parameter, hints.get(parameter.name, Any), schemas))
    described: dict[str, Any] = {"name": method.name}
    docstring = inspect.getdoc(method.func)
    if docstring:
        described["summary"] = docstring.split("\n\n", 1)[0].replace("\n", " ")
        described["description"] = docstring
    described["params"] = params
    result = hints.get("return", Any)
    if method.streams:
        # A generator streams its items (``proxy.stream.name()``): the result described
        # is one item, and x-streaming says so.
        result = _item_type(result)
        described["x-streaming"] = True
    described["result"] = {"name": "result", "schema": schemas.of(result)}
    described["paramStructure"] = _structure(kinds)
    if method.errors:
        described["errors"] = [error.to_error_object() for error in method.errors]
    return described


def _param(parameter: inspect.Parameter, hint: Any, schemas: SchemaMaker) -> dict[str, Any]:
    schema = schemas.of(hint)
    if parameter.default is not parameter.empty and _is_json(parameter.default):
        schema = {**schema, "default": parameter.default}
    return {
        "name": parameter.name,
        "schema": schema,
        "required": parameter.default is parameter.empty,
    }


def _item_type(hint: Any) -> Any:
    """The item type of a generator's return hint (``Iterator[Cat]`` is ``Cat``)."""
    arguments = typing.get_args(hint)
    return arguments[0] if arguments else Any


def _structure(kinds: set[Any]) -> str:
    if inspect.Parameter.POSITIONAL_ONLY in kinds:
        return "by-position"
    if inspect.Parameter.KEYWORD_ONLY in kinds:
        return "by-name"
    return "either"


def _hints(method: Method) -> dict[str, Any]:
    """The function's type hints, resolved; none (and one log line) if they cannot be."""
    try:
        return typing.get_type_hints(method.func, include_extras=True)
    except Exception as exc:
        logger.warning("cannot resolve the type hints of %s: %s", method.name, exc)
        return {}


def _is_json(value: Any) -> bool:
    try:
        protocol.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _pydantic_available() -> bool:
    try:
        import pydantic  # noqa: F401
    except ImportError:
        return False
    return True


class SchemaMaker:
    """JSON Schemas for type hints, collecting the named ones (models) as components."""

    def __init__(self, use_pydantic: bool) -> None:
        self.use_pydantic = use_pydantic
        self.components: dict[str, Schema] = {}

    def of(self, hint: Any) -> Schema:
        if hint is Any or hint is inspect.Parameter.empty:
            return {}
        if self.use_pydantic:
            return self._pydantic_schema(hint)
        return builtin_schema(hint)

    def _pydantic_schema(self, hint: Any) -> Schema:
        import pydantic

        try:
            schema: Schema = pydantic.TypeAdapter(hint).json_schema(ref_template=SCHEMA_REFERENCE)
        except Exception:  # a type pydantic cannot describe: anything goes
            return builtin_schema(hint)
        self.components.update(schema.pop("$defs", {}))
        return schema


_SIMPLE: dict[Any, Schema] = {
    type(None): {"type": "null"},
    None: {"type": "null"},
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    list: {"type": "array"},
    tuple: {"type": "array"},
    set: {"type": "array", "uniqueItems": True},
    frozenset: {"type": "array", "uniqueItems": True},
    dict: {"type": "object"},
}


def builtin_schema(hint: Any) -> Schema:
    """The JSON Schema of the common hints, without pydantic; ``{}`` (anything) for the rest."""
    if hint in _SIMPLE:
        return dict(_SIMPLE[hint])
    origin = typing.get_origin(hint)
    arguments = typing.get_args(hint)
    if origin is typing.Annotated:
        return builtin_schema(arguments[0])
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [builtin_schema(argument) for argument in arguments]}
    if origin is typing.Literal:
        return {"enum": list(arguments)}
    if isinstance(origin, type) and issubclass(origin, Mapping):
        if len(arguments) != 2:
            return {"type": "object"}
        # Any value: ``true``, as pydantic says it, so that both describe it alike.
        return {"type": "object", "additionalProperties": builtin_schema(arguments[1]) or True}
    if origin is tuple and arguments and arguments[-1] is not Ellipsis:
        items = [builtin_schema(argument) for argument in arguments]
        count = len(items)
        return {"type": "array", "prefixItems": items, "minItems": count, "maxItems": count}
    if isinstance(origin, type) and issubclass(origin, (Sequence, set, frozenset)):
        base = _SIMPLE.get(origin, {"type": "array"})
        return {**base, "items": builtin_schema(arguments[0])} if arguments else dict(base)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"enum": [member.value for member in hint]}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _dataclass_schema(hint)
    return {}


def _dataclass_schema(cls: type) -> Schema:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    required = [
        item.name
        for item in fields
        if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
    ]
    return {
        "type": "object",
        "title": cls.__name__,
        "properties": {item.name: builtin_schema(hints.get(item.name, Any)) for item in fields},
        "required": required,
    }


def summary_lines(document: dict[str, Any]) -> list[str]:
    """The document for people: a line per method, ``name(a: number, b: number) -> number``,
    its summary, and the errors it declares."""
    info = document.get("info", {})
    lines = [f"{info.get('title', '?')} {info.get('version', '')}".rstrip()]
    if info.get("description"):
        lines.append(f"  {info['description']}")
    for method in document.get("methods", []):
        params = ", ".join(
            f"{param['name']}: {schema_text(param.get('schema', {}))}"
            + ("" if param.get("required", False) else " = " + _default_text(param))
            for param in method.get("params", [])
        )
        result = schema_text(method.get("result", {}).get("schema", {}))
        streams = "stream of " if method.get("x-streaming") else ""
        lines.append(f"  {method['name']}({params}) -> {streams}{result}")
        if method.get("summary"):
            lines.append(f"      {method['summary']}")
        for error in method.get("errors", []):
            lines.append(f"      error {error['code']}: {error['message']}")
    events = document.get("x-events", {})
    for listened in events.get("subscriptions", []):
        source = listened.get("channel") or f"pattern {listened.get('pattern')}"
        lines.append(_listener_line(f"subscribes to {source}", listened))
    for consumed in events.get("consumers", []):
        lines.append(_listener_line(f"consumes {consumed.get('topic')}", consumed))
    return lines


def _listener_line(what: str, listener: dict[str, Any]) -> str:
    data = schema_text(listener.get("data", {}))
    return f"  {what}: {listener.get('handler')}({data})"


def _default_text(param: dict[str, Any]) -> str:
    schema = param.get("schema", {})
    return protocol.dumps(schema["default"]).decode() if "default" in schema else "…"


def schema_text(schema: Schema) -> str:
    """A JSON Schema in a word or two: ``number``, ``array of string``, ``Cat``, ``any``."""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(schema_text(option) for option in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(protocol.dumps(value).decode() for value in schema["enum"])
    kind = schema.get("type")
    if kind == "array" and isinstance(schema.get("items"), dict):
        return f"array of {schema_text(schema['items'])}"
    if isinstance(kind, str):
        return str(schema.get("title", kind)) if kind == "object" else kind
    return "any"
