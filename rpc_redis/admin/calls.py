"""``rpc-admin call``, ``ping`` and ``describe``: calls through the library's own Client.

``call`` takes a method as ``SERVICE.METHOD`` (the first dot ends the service's name,
so ``calculator.math.add`` is the method ``math.add``) and its params as JSON values:
positional ones as arguments, named ones as ``--kw NAME=VALUE`` or a single JSON
object, or all of them at once as ``--params``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import protocol
from ..client import Client
from ..middleware import Middleware
from .outcome import UsageError

Params = list[Any] | dict[str, Any]


@dataclass(frozen=True)
class Target:
    service: str
    method: str

    @classmethod
    def parse(cls, text: str) -> Target:
        service, dot, method = text.partition(".")
        if not dot or not service or not method:
            raise UsageError(f"{text!r} is not SERVICE.METHOD (e.g. calculator.add)")
        return cls(service, method)


def json_value(text: str, what: str) -> Any:
    try:
        return protocol.loads(text)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not JSON (quote strings: '\"{text}\"')") from None


def params_of(arguments: Sequence[str], named: Sequence[str], whole: str | None) -> Params:
    """The call's params from the command line: positional JSON values, ``--kw
    NAME=VALUE`` pairs or one JSON object (named), or ``--params`` (either)."""
    if whole is not None:
        if arguments or named:
            raise UsageError("--params gives all the params: no arguments or --kw with it")
        params = json_value(whole, "--params")
        if not isinstance(params, (list, dict)):
            raise UsageError("--params must be a JSON array or object")
        return params
    if arguments and named:
        raise UsageError("JSON-RPC params are positional or named, not both")
    if named:
        pairs: dict[str, Any] = {}
        for pair in named:
            name, equals, value = pair.partition("=")
            if not equals or not name:
                raise UsageError(f"--kw {pair!r} is not NAME=VALUE")
            pairs[name] = json_value(value, f"--kw {name}")
        return pairs
    values = [json_value(argument, "argument") for argument in arguments]
    if len(values) == 1 and isinstance(values[0], dict):
        return values[0]  # one JSON object: named params (--params '[{...}]' for one object)
    return values


def call(client: Client, target: Target, params: Params, timeout: float) -> Any:
    """The method's result; raises its RpcError, or RpcTimeout."""
    return client.call(target.service, target.method, params, timeout=timeout)


@dataclass(frozen=True)
class Pong:
    """Which worker answered a ping, and how long the round trip took."""

    service: str
    worker: str
    host: str
    pid: int | None
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "worker": self.worker,
            "host": self.host,
            "pid": self.pid,
            "latency_ms": round(self.seconds * 1000, 3),
        }

    def line(self) -> str:
        return (
            f"pong from {self.service}: worker {self.worker} (pid {self.pid} on {self.host}) "
            f"in {self.seconds * 1000:.1f} ms"
        )


def ping(client: Client, service: str, timeout: float) -> Pong:
    """A round trip through a live worker of the service (``rpc.ping``)."""
    started = time.perf_counter()
    answer = client.call(service, "rpc.ping", timeout=timeout)
    seconds = time.perf_counter() - started
    answer = answer if isinstance(answer, dict) else {}
    pid = answer.get("pid")
    return Pong(
        service,
        str(answer.get("worker", "?")),
        str(answer.get("host", "?")),
        pid if isinstance(pid, int) else None,
        seconds,
    )


def describe(client: Client, service: str, timeout: float) -> dict[str, Any]:
    """The service's OpenRPC document, from one of its workers (``rpc.discover``)."""
    document = client.call(service, "rpc.discover", timeout=timeout)
    if not isinstance(document, dict):
        raise UsageError(f"{service} answered rpc.discover with no document")
    return document


def make_client(
    url: str, prefix: str, timeout: float, middleware: Sequence[Middleware] = ()
) -> Client:
    return Client(url, timeout=timeout, prefix=prefix, middleware=middleware, max_connections=2)
