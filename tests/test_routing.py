"""The pure rules of routing on a cluster, and of receiving through a redirection: which
node a command goes to, how MOVED and ASK are read, and that a request already taken is
never dropped for an error that came after it."""

from __future__ import annotations

import pytest
import redis.exceptions

from rpc_redis.connection import command_key, redirect_of, slot_of
from rpc_redis.connection.routes import SlotMap, SyncRoutes, with_asking, without_asking
from rpc_redis.worker.receiving import (
    AfterFailure,
    TakenThenFailed,
    after_receive_failure,
    parse_received,
    slot_groups,
)


def moved(slot: int, address: str) -> redis.exceptions.MovedError:
    return redis.exceptions.MovedError(f"{slot} {address}")


def test_a_command_is_placed_by_its_first_key_eval_by_its_first_keys() -> None:
    assert command_key(("RPUSH", "rpc:queue:{a}", b"x")) == "rpc:queue:{a}"
    assert command_key(("EVAL", "return 1", 1, "rpc:reply:k", "v")) == "rpc:reply:k"
    assert command_key(("EVAL", "return 1", 0)) is None
    assert command_key(("PING",)) is None and command_key(("CLIENT", "LIST")) is None
    # A service's keys share its slot: the hash tag is all that is hashed.
    assert slot_of("rpc:queue:{calculator}") == slot_of("rpc:reply:{calculator}:00ff")


def test_moved_and_ask_are_read_as_redirections_and_nothing_else_is() -> None:
    assert redirect_of(moved(3999, "127.0.0.1:7001")) == (("127.0.0.1", 7001), False)
    asked = redis.exceptions.AskError("3999 127.0.0.1:7002")
    assert redirect_of(asked) == (("127.0.0.1", 7002), True)
    assert redirect_of(redis.exceptions.ResponseError("WRONGTYPE")) is None
    assert redirect_of(b"OK") is None


def test_asking_goes_before_each_command_asked_for_and_its_ok_is_left_out() -> None:
    commands = [("BLPOP", "q", 1), ("LPOP", "q", 8)]
    sent = with_asking(commands, [True, True])
    assert sent == [("ASKING",), commands[0], ("ASKING",), commands[1]]
    assert without_asking([b"OK", None, b"OK", [b"x"]], [True, True]) == [None, [b"x"]]
    assert without_asking([None, None], [False, False]) == [None, None]


def test_the_slot_map_is_loaded_from_cluster_slots_and_corrected_by_moved() -> None:
    slot_map = SlotMap([("seed", 1)])
    assert slot_map.owner(5) == ("seed", 1)  # not loaded: ask a seed
    slot_map.load([[0, 8191, [b"127.0.0.1", 7000, b"id"]], [8192, 16383, ["127.0.0.1", 7001]]])
    assert slot_map.owner(100) == ("127.0.0.1", 7000)
    assert slot_map.owner(9000) == ("127.0.0.1", 7001)
    routes = SyncRoutes(slot_map=slot_map, make_pool=lambda address: address)  # type: ignore[arg-type, return-value]
    key = "rpc:queue:{a}"
    routes.follow(redirect_of(moved(slot_of(key), "127.0.0.1:7002")), key)  # type: ignore[arg-type]
    assert routes.owner(key) == ("127.0.0.1", 7002)
    assert set(slot_map.candidates()) == {("127.0.0.1", 7000), ("127.0.0.1", 7001),
                                          ("127.0.0.1", 7002), ("seed", 1)}  # fmt: skip
    assert slot_map.candidates()[-1] == ("seed", 1)  # known owners first
    assert routes.same_slot([("RPUSH", key, 1), ("BLPOP", "rpc:reply:{a}:x", 1)])
    assert not routes.same_slot([("RPUSH", key, 1), ("BLPOP", "rpc:reply:x", 1)])


def test_queues_block_together_on_a_node_and_by_slot_on_a_cluster() -> None:
    queues = ["rpc:queue:{a}", "rpc:queue:{b}", "custom{a}"]
    assert slot_groups(queues, lambda queue: None) == [queues]
    assert slot_groups(queues, slot_of) == [["rpc:queue:{a}", "custom{a}"], ["rpc:queue:{b}"]]


def test_a_request_popped_is_never_dropped_for_a_redirection_of_the_lpop_behind_it() -> None:
    """The BLPOP took a request; the LPOP riding behind it met the slot moving: the
    request comes out with the error, to be served before the redirection is followed."""
    popped = (b"rpc:queue:{a}", b"request")
    with pytest.raises(TakenThenFailed) as raised:
        parse_received([popped, moved(1, "127.0.0.1:7001")], ["rpc:queue:{a}"], 8)
    assert (raised.value.queue, raised.value.requests) == ("rpc:queue:{a}", [b"request"])
    assert after_receive_failure(raised.value.error) is AfterFailure.REDIRECT
    with pytest.raises(redis.exceptions.MovedError):  # nothing taken: the error alone
        parse_received([None, moved(1, "127.0.0.1:7001")], ["rpc:queue:{a}"], 8)


def test_a_cluster_between_two_states_is_retried_soon_not_waited_for() -> None:
    for error in (
        redis.exceptions.TryAgainError("Multiple keys request during rehashing of slot"),
        redis.exceptions.ClusterDownError("The cluster is down"),
    ):
        assert after_receive_failure(error) is AfterFailure.RETRY_SOON
