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
    if schemas.components:
        document["components"] = {"schemas": schemas.components}
    document.update(events_and_streams(service))
    return document


def events_and_streams(service: Service) -> dict[str, Any]:
    """The events a service publishes and the streams it serves, as ``x-events`` and
    ``x-streams`` extensions, once services have them (issue 14): nothing yet."""
    return {}


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
    described["result"] = {"name": "result", "schema": schemas.of(hints.get("return", Any))}
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
        value = builtin_schema(arguments[1]) if len(arguments) == 2 else {}
        return {"type": "object", **({"additionalProperties": value} if value else {})}
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
        lines.append(f"  {method['name']}({params}) -> {result}")
        if method.get("summary"):
            lines.append(f"      {method['summary']}")
        for error in method.get("errors", []):
            lines.append(f"      error {error['code']}: {error['message']}")
    return lines


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
