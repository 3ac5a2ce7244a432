"""Worker settings live in one place: the command line is derived from them, and one
rule checks a value whichever way it comes in."""

from __future__ import annotations

import dataclasses

import pytest

from rpc_redis import Service, Worker
from rpc_redis.cli import settings_from, worker_parser
from rpc_redis.worker.settings import WorkerSettings, settings_fields

OFFERED = [item for item, _ in settings_fields() if item.metadata["command_line"]]


def test_every_setting_is_an_option_with_the_same_default() -> None:
    parser = worker_parser()
    options = {action.dest: action for action in parser._actions}
    for item in OFFERED:
        assert item.name in options, item.name
        assert options[item.name].option_strings[0] == "--" + item.name.replace("_", "-")
        assert options[item.name].default == item.default, item.name
        assert item.metadata["help"].split(" (default")[0] in (options[item.name].help or "")


def test_no_arguments_give_the_default_settings() -> None:
    args = worker_parser().parse_args(["services.calculator"])
    assert settings_from(args) == WorkerSettings()


def test_the_command_line_and_the_constructor_make_the_same_settings() -> None:
    argv = [
        "services.calculator",
        "--concurrency=3",
        "--prefetch=0",
        "--time-limit=2.5",
        "--reply-ttl=9",
        "--reliable",
        "--no-receive-in-threads",
        "--queue=jobs",
    ]
    from_cli = settings_from(worker_parser().parse_args(argv))
    worker = Worker(
        Service("calculator"),
        "redis://localhost:6379/0",
        concurrency=3,
        prefetch=0,
        time_limit=2.5,
        reply_ttl=9,
        reliable=True,
        receive_in_threads=False,
        queue="jobs",
    )
    assert worker.settings == from_cli


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("concurrency", 0, "must be at least 1"),
        ("prefetch", -1, "must be at least 0"),
        ("reply_ttl", 0, "must be a positive number of seconds"),
        ("time_limit", -1, "must be a positive number of seconds"),
        ("heartbeat_interval", 0, "must be a positive number of seconds"),
    ],
)
def test_one_rule_refuses_a_value_either_way(
    name: str, value: float, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match=f"{name} {problem}"):
        WorkerSettings(**{name: value})
    with pytest.raises(SystemExit):
        worker_parser().parse_args(["m", f"--{name.replace('_', '-')}", str(value)])
    assert problem in capsys.readouterr().err


def test_an_unknown_setting_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="concurency"):
        Worker(Service("calculator"), "redis://localhost:6379/0", concurency=3)


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        WorkerSettings().concurrency = 2  # type: ignore[misc]
