"""What every topology does to its embedded nodes: wait on them, lock them, add ACL users.

A topology (a Sentinel set, a cluster) is made of :class:`~rpc_redis.embedded.EmbeddedRedis`
processes; this module holds the few node-level steps they share, so that each is written once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import redis

from ..embedded import EmbeddedRedis

Address = tuple[str, int]
T = TypeVar("T")

POLL_INTERVAL = 0.02
# For every data node: a replica syncs at once (valkey 8 and Redis 7 wait 5 s by default,
# for more replicas to share one diskless transfer).
DATA_NODE_ARGS = ("--repl-diskless-sync-delay", "0")
# What a node that is starting, stopping or failing over answers; a poll tries again.
NOT_YET = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class TopologyError(RuntimeError):
    """A topology did not reach the state asked for within its time."""


def poll_until(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """The first truthy value ``probe`` returns, polled every 20 ms for at most ``timeout`` s.

    Redis offers no event for "the sentinels agree" or "the cluster is ok", so a bounded
    poll of a cheap command is the event; a probe that meets a node still down retries.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = probe()
        except NOT_YET as exc:
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            cause = f" (last error: {last_error!r})" if last_error else ""
            raise TopologyError(f"not within {timeout}s: {what}{cause}")
        time.sleep(POLL_INTERVAL)


def connect(node: EmbeddedRedis, password: str | None = None) -> redis.Redis:
    """A short-timeout connection to one node, answering str, for looking and steering."""
    return redis.Redis(
        host=node.host,
        port=node.port,
        password=password,
        socket_timeout=5,
        socket_connect_timeout=2,
        decode_responses=True,
    )


def address_of(node: EmbeddedRedis) -> Address:
    return (node.host, node.port)


def require_password(node: EmbeddedRedis, password: str | None) -> None:
    """Give the default user ``password`` on a started node (a no-op for None).

    Set after the start, not with ``--requirepass``, because the start waits for an
    unauthenticated PING; ``ACL SETUSER default`` is what requirepass sets, and it works
    on a sentinel too, which has no CONFIG SET.
    """
    if password is None:
        return
    with connect(node) as connection:
        connection.execute_command("ACL", "SETUSER", "default", "on", "resetpass", f">{password}")


def set_acl_users(
    nodes: Iterable[EmbeddedRedis],
    users: Iterable[Sequence[str]],
    *,
    password: str | None = None,
) -> None:
    """Run ``ACL SETUSER *arguments`` for each user on each node.

    ``users`` holds argument lists as written after ``ACL SETUSER`` (``["worker", "on",
    ">secret", "~rpc:*", "+blpop"]``); ``password`` is the default user's, to get in.
    ACLs are not replicated, so every node of a set or a cluster needs them.
    """
    user_arguments = [list(arguments) for arguments in users]
    for node in nodes:
        with connect(node, password) as connection:
            for arguments in user_arguments:
                connection.execute_command("ACL", "SETUSER", *arguments)


def replication(node: EmbeddedRedis, password: str | None = None) -> dict[str, object]:
    """The node's ``INFO replication``, as redis-py parses it."""
    with connect(node, password) as connection:
        return dict(connection.info("replication"))


def in_sync(node: EmbeddedRedis, password: str | None = None) -> bool:
    """Whether a replica has finished its sync with its primary."""
    info = replication(node, password)
    return (
        info.get("role") == "slave"
        and info.get("master_link_status") == "up"
        and not info.get("master_sync_in_progress")
    )


class UnixSocketRedis(EmbeddedRedis):
    """An embedded server that also listens on a unix socket in its own directory.

    TCP stays on, for the start's readiness check and for looking at it from a test.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        executable: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(port, executable=executable, extra_args=extra_args)
        # The socket's path is known only once the directory exists.
        self.extra_args = (
            *self.extra_args,
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
        )  # fmt: skip

    @property
    def socket_path(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}?db=0"


class DataNodes:
    """What a Sentinel set and a cluster share about their data nodes: one password,
    ACL users that come back with a restarted node, finding a node by its address."""

    def __init__(self, nodes: list[EmbeddedRedis], password: str | None) -> None:
        self.nodes = nodes
        self.password = password
        self.acl_users: list[list[str]] = []

    def start_node(self, node: EmbeddedRedis, arguments: tuple[str, ...], timeout: float) -> None:
        """(Re)start one node with ``arguments``, locked and with the users added so far."""
        node.extra_args = (*DATA_NODE_ARGS, *arguments)
        if self.password is not None:
            node.extra_args += ("--masterauth", self.password)
        node.start(timeout)
        require_password(node, self.password)
        set_acl_users([node], self.acl_users, password=self.password)

    def running_nodes(self) -> list[EmbeddedRedis]:
        return [node for node in self.nodes if node.process is not None]

    def node_at(self, address: Address) -> EmbeddedRedis:
        for node in self.nodes:
            if address_of(node) == address:
                return node
        raise TopologyError(f"no node at {address} in {[address_of(n) for n in self.nodes]}")

    def add_acl_users(self, users: Iterable[Sequence[str]]) -> None:
        """``ACL SETUSER`` each user on every running data node, and again on any restart."""
        new_users = [list(arguments) for arguments in users]
        self.acl_users.extend(new_users)
        set_acl_users(self.running_nodes(), new_users, password=self.password)


def multi_host_url(
    scheme: str, addresses: Iterable[Address], password: str | None, path: str = ""
) -> str:
    """``scheme://[:password@]host:port,host:port...path``, the password quoted."""
    credentials = f":{quote(password, safe='')}@" if password else ""
    hosts = ",".join(f"{host}:{port}" for host, port in addresses)
    return f"{scheme}://{credentials}{hosts}{path}"
