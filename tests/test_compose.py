"""docker-compose.yml and the Dockerfile agree with the code, without a Docker engine.

Each check reads the files as they are in the repository: a worker whose command names
a module that defines no Service, a worker that talks to some other Redis, an example
service with no worker, or an image that does not start ``rpc-worker`` fails here
rather than at ``docker compose up``.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from rpc_redis.cli import worker_parser
from rpc_redis.service import Service, load_services

REPOSITORY = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPOSITORY / "docker-compose.yml"
DOCKERFILE = REPOSITORY / "Dockerfile"
DOCKERIGNORE = REPOSITORY / ".dockerignore"
SERVICES_DIRECTORY = REPOSITORY / "services"

# The example modules that must have a worker; discovery below must find at least these.
KNOWN_EXAMPLES = {"services.calculator", "services.cats", "services.sms", "services.orders"}


# -- reading the files --------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict), "docker-compose.yml is not a mapping"
    assert isinstance(document.get("services"), dict), "docker-compose.yml has no services"
    return document


def redis_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the official Redis image (``redis`` or ``redis:TAG``)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if str(service.get("image", "")).partition(":")[0] in ("redis", "docker.io/library/redis")
    }


def is_built_from_dockerfile(service: dict[str, Any]) -> bool:
    """True if the service's image is built from this repository's Dockerfile."""
    build = service.get("build")
    if build is None:
        return False
    if isinstance(build, str):
        context, dockerfile = build, "Dockerfile"
    else:
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
    return (REPOSITORY / context / dockerfile).resolve() == DOCKERFILE.resolve()


def worker_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if is_built_from_dockerfile(service)
    }


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if isinstance(command, str):
        return shlex.split(command)
    assert isinstance(command, list), f"command must be a list or a string, not {command!r}"
    return [str(part) for part in command]


def worker_arguments(name: str, service: dict[str, Any]) -> Any:
    """The command parsed exactly as ``rpc-worker`` parses its argv."""
    command = command_of(service)
    try:
        return worker_parser().parse_args(command)
    except SystemExit:
        pytest.fail(f"rpc-worker rejects the command of compose service {name!r}: {command}")


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = (item.partition("=") for item in environment)
        return {key: value for key, _, value in pairs}
    return {str(key): "" if value is None else str(value) for key, value in environment.items()}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    if pending:
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def exec_form(arguments: str) -> list[str] | None:
    """The JSON (exec) form of ENTRYPOINT/CMD/COPY as a list, or None for the shell form."""
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return None
    return parsed if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed) else None


def copy_sources_and_destination(arguments: str) -> tuple[list[str], str]:
    parts = exec_form(arguments) or shlex.split(arguments)
    parts = [part for part in parts if not part.startswith("--")]  # --chown=..., --link
    assert len(parts) >= 2, f"COPY needs a source and a destination: {arguments!r}"
    return parts[:-1], parts[-1]


def final_workdir(instructions: list[tuple[str, str]]) -> str:
    workdir = "/"
    for keyword, arguments in instructions:
        if keyword == "WORKDIR":
            workdir = posixpath.join(workdir, arguments)
    return posixpath.normpath(workdir)


def copies_into(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """Each COPY source (normalised, no trailing slash) -> where it lands in the image."""
    copied: dict[str, str] = {}
    workdir = "/"
    for keyword, arguments in instructions:
        if keyword == "WORKDIR":
            workdir = posixpath.join(workdir, arguments)
        elif keyword == "COPY":
            sources, destination = copy_sources_and_destination(arguments)
            target = posixpath.normpath(posixpath.join(workdir, destination))
            for source in sources:
                copied[posixpath.normpath(source)] = target
    return copied


def dockerignore_excludes(relative_path: str) -> bool:
    """Whether .dockerignore leaves ``relative_path`` out of the build context."""
    if not DOCKERIGNORE.exists():
        return False
    excluded = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        for candidate in (pattern, pattern.removeprefix("**/")):
            if fnmatch.fnmatch(relative_path, candidate) or relative_path.startswith(
                candidate + "/"
            ):
                excluded = not negated
    return excluded


# -- (1) Redis ----------------------------------------------------------------------


def test_there_is_a_redis_service_with_a_ping_healthcheck() -> None:
    compose = load_compose()
    redis = redis_services(compose)
    assert redis, "docker-compose.yml has no service running the redis image"
    for name, service in redis.items():
        test = service.get("healthcheck", {}).get("test")
        command = shlex.split(test) if isinstance(test, str) else list(test or [])
        assert "redis-cli" in command and "ping" in command, (
            f"redis service {name!r} needs a healthcheck running `redis-cli ping`, has {test!r}"
        )


# -- (2) workers --------------------------------------------------------------------


def test_there_are_worker_services_built_from_the_dockerfile() -> None:
    assert worker_services(load_compose()), "no compose service is built from the Dockerfile"


def test_every_worker_command_loads_real_services() -> None:
    for name, service in worker_services(load_compose()).items():
        arguments = worker_arguments(name, service)
        assert arguments.targets, f"compose service {name!r} names no MODULE[:ATTR]"
        for target in arguments.targets:
            try:
                loaded = load_services(target)
            except (ImportError, LookupError) as exc:
                pytest.fail(f"compose service {name!r}: {target} does not load: {exc}")
            assert loaded and all(isinstance(s, Service) for s in loaded), (
                f"compose service {name!r}: {target} yields no Service"
            )


def test_every_worker_talks_to_the_compose_redis() -> None:
    compose = load_compose()
    redis_names = set(redis_services(compose))
    for name, service in worker_services(compose).items():
        url = environment_of(service).get("RPC_REDIS_URL")
        assert url, f"compose service {name!r} does not set RPC_REDIS_URL"
        arguments = worker_arguments(name, service)
        # --redis-url would win over the environment; if given it must agree.
        for candidate in filter(None, [url, arguments.redis_url]):
            parts = urlsplit(candidate)
            assert parts.scheme == "redis", f"{name!r}: {candidate} is not a redis:// URL"
            assert parts.hostname in redis_names, (
                f"{name!r}: {candidate} does not name the compose redis service "
                f"({sorted(redis_names)})"
            )
            assert parts.port in (None, 6379), f"{name!r}: {candidate} is not Redis's port"


def test_every_worker_waits_for_a_healthy_redis_and_drains_on_sigterm() -> None:
    compose = load_compose()
    redis_names = set(redis_services(compose))
    for name, service in worker_services(compose).items():
        depends_on = service.get("depends_on")
        assert isinstance(depends_on, dict), f"{name!r} must depend on redis with a condition"
        conditions = {dep: (spec or {}).get("condition") for dep, spec in depends_on.items()}
        assert any(conditions.get(redis) == "service_healthy" for redis in redis_names), (
            f"{name!r} must wait for redis to be healthy, has {conditions}"
        )
        assert service.get("stop_signal") == "SIGTERM", f"{name!r} must stop with SIGTERM"
        assert service.get("stop_grace_period"), f"{name!r} needs a stop_grace_period"


# -- (3) every example service has a worker ------------------------------------------


def example_service_modules() -> dict[str, list[Service]]:
    """Every module under services/ that defines at least one Service."""
    found: dict[str, list[Service]] = {}
    for path in sorted(SERVICES_DIRECTORY.glob("*.py")):
        if path.stem == "__init__":
            continue
        module = f"services.{path.stem}"
        try:
            found[module] = load_services(module)
        except LookupError:  # defines no Service (the demo)
            continue
    return found


def test_example_discovery_finds_the_known_services_and_not_the_demo() -> None:
    modules = example_service_modules()
    assert set(modules) >= KNOWN_EXAMPLES, f"found {sorted(modules)}"
    assert "services.demo" not in modules


def test_every_example_service_has_a_worker() -> None:
    served: set[int] = set()
    for name, service in worker_services(load_compose()).items():
        for target in worker_arguments(name, service).targets:
            served.update(id(s) for s in load_services(target))
    for module, services in example_service_modules().items():
        for example in services:
            assert id(example) in served, (
                f"{module} defines Service {example.name!r}, which no compose worker serves"
            )


# -- (4) the Dockerfile --------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def test_the_dockerfile_entrypoint_is_rpc_worker_in_exec_form() -> None:
    entrypoints = [arguments for keyword, arguments in dockerfile() if keyword == "ENTRYPOINT"]
    assert entrypoints, "the Dockerfile has no ENTRYPOINT"
    # The exec (JSON) form: compose commands become arguments and SIGTERM reaches rpc-worker.
    entrypoint = exec_form(entrypoints[-1])
    assert entrypoint is not None, f"ENTRYPOINT must use the exec form: {entrypoints[-1]}"
    assert entrypoint[:1] == ["rpc-worker"], f"ENTRYPOINT is {entrypoint}, not rpc-worker"


def test_the_dockerfile_copies_services_into_the_working_directory() -> None:
    instructions = dockerfile()
    copied = copies_into(instructions)
    assert "services" in copied, f"the Dockerfile does not COPY services/ (copies {copied})"
    workdir = final_workdir(instructions)
    # rpc-worker imports services.* from the working directory.
    assert copied["services"] == posixpath.join(workdir, "services"), (
        f"services/ lands in {copied['services']}, not under the WORKDIR {workdir}"
    )


def test_the_dockerfile_installs_the_package_without_dev_extras() -> None:
    runs = [arguments for keyword, arguments in dockerfile() if keyword == "RUN"]
    installs = [run for run in runs if "pip install" in run]
    assert installs, "the Dockerfile never runs pip install"
    assert any(" ." in run.split("pip install", 1)[1] for run in installs), (
        f"the package itself is not installed: {installs}"
    )
    assert not any("[dev" in run for run in installs), f"dev extras installed: {installs}"


def test_the_dockerfile_runs_as_a_non_root_user() -> None:
    users = [arguments for keyword, arguments in dockerfile() if keyword == "USER"]
    assert users, "the Dockerfile has no USER: the worker would run as root"
    user = users[-1].partition(":")[0]
    assert user not in ("root", "0"), f"the worker runs as {users[-1]}"


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    for source in copies_into(dockerfile()):
        if any(char in source for char in "*?["):
            continue  # optional files such as README.m[d]
        assert (REPOSITORY / source).exists(), f"COPY {source}: no such file in the repository"
        assert not dockerignore_excludes(source), f".dockerignore excludes {source}"


def test_dockerignore_leaves_out_the_virtualenv_and_git() -> None:
    for path in (".venv", ".git", "rpc_redis/__pycache__", ".pytest_cache"):
        assert dockerignore_excludes(path), f".dockerignore does not exclude {path}"
