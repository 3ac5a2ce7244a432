"""The package's shape, enforced: no import circles, the client and the worker never
import each other, and the shared core beneath both imports neither."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPOSITORY

PACKAGE = REPOSITORY / "rpc_redis"
CORE = {
    "rpc_redis.protocol",
    "rpc_redis.errors",
    "rpc_redis.connection",
    "rpc_redis.service",
    "rpc_redis.context",
    "rpc_redis.middleware",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPOSITORY).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports (at any depth of its code)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in known else base)
    return {target for target in found if target in known and target != name}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def test_no_module_is_in_an_import_circle() -> None:
    graph = import_graph()
    # Package faces (__init__) re-export their folder; a module importing its own
    # package's face would be a circle through it, which is what this looks for.
    circles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for target in graph[node]:
                if target == start:
                    circles.append(path)
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, [*path, target]))
    assert circles == []


def test_client_and_worker_code_never_import_each_other() -> None:
    for name, targets in import_graph().items():
        if name.startswith("rpc_redis.client"):
            assert not {t for t in targets if t.startswith("rpc_redis.worker")}, name
        if name.startswith("rpc_redis.worker"):
            assert not {t for t in targets if t.startswith("rpc_redis.client")}, name


def test_the_shared_core_imports_neither_side() -> None:
    graph = import_graph()
    for name in CORE:
        sides = {t for t in graph[name] if t.startswith(("rpc_redis.client", "rpc_redis.worker"))}
        assert not sides, f"{name} imports {sides}"
    protocol = [name for name in graph if name.split(".")[:2] == ["rpc_redis", "protocol"]]
    assert len(protocol) > 1  # the package and its modules
    for name in protocol:  # the wire rules need nothing but errors, and each other
        beyond = {
            t for t in graph[name] if not t.startswith(("rpc_redis.protocol", "rpc_redis.errors"))
        }
        assert not beyond, f"{name} imports {beyond}"


def test_the_graph_is_read() -> None:
    """The rules above look at real edges (a parser that found none would pass them)."""
    graph = import_graph()
    assert "rpc_redis.worker.serving" in graph["rpc_redis.worker.lanes"]
    assert "rpc_redis.protocol" in graph["rpc_redis.client.sync"]
    assert "rpc_redis.worker" in graph["rpc_redis.cli"]
