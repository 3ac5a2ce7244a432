"""A service whose params are checked against their type hints, served by real
rpc-worker processes in tests: ``rpc-worker tests.typed_service``."""

from __future__ import annotations

import asyncio
from datetime import date

from pydantic import BaseModel, Field

from rpc_redis import RpcError, Service

service = Service("typed", validate=True, version="1.2.0", description="Typed params.")
loose = Service("loose")


class Cat(BaseModel):
    name: str = Field(min_length=1)
    age: int = Field(ge=0)


class Adoption(BaseModel):
    cat: Cat
    on: date


class NoSuchCat(RpcError):
    default_code = 4004
    default_message = "No such cat"


@service.method
def add(a: float, b: float = 0) -> float:
    """Add two numbers.

    Strings that read as numbers are numbers.
    """
    return a + b


@service.method(errors=[NoSuchCat])
def adopt(cat: Cat, on: date) -> Adoption:
    """Adopt a cat on a day: pydantic models in and out."""
    if cat.name == "nobody":
        raise NoSuchCat(data=cat.name)
    return Adoption(cat=cat, on=on)


@service.method
async def later(count: int, names: list[str]) -> dict[str, int]:
    """An async def method, validated as well."""
    await asyncio.sleep(0)
    return {name: count for name in names}


@loose.method
def add_loose(a: float, b: float) -> float:
    """Not validated: what the caller sends is what it gets."""
    return a + b


@loose.method(validate=True)
def add_strict(a: float, b: float) -> float:
    """Validated on its own, in a service that is not."""
    return a + b
