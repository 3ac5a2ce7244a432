"""``rpc-admin dead``: count, list, requeue and purge a service's dead letters.

The functions work on any redis-py client, so the same operations are usable from
Python; ``add_dead_commands`` puts the command line around them (``cli.py``).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TextIO

import redis

from .. import protocol
from ..connection import slot_of
from ..events import wire
from ..printable import printable
from .outcome import EXIT_OK, UsageError

# What the operations work on: a client of one node (or of Sentinel's primary), or of a cluster.
RedisClient = redis.Redis | redis.RedisCluster

# The longest message (in characters) a `dead list` line shows; --json shows it all.
MESSAGE_WIDTH = 60
# The longest reason a `dead list` line shows.
REASON_WIDTH = 100
UNREADABLE_REASON = "unreadable entry (not a dead letter a worker wrote)"

# KEYS[1]: the dead-letter list; KEYS[2...]: the queues its entries name that share its
# hash slot (all of them, on a single node). ARGV[1]: the most messages to requeue, 0
# for no limit. Returns {requeued, skipped, left, events}.
#
# Entries are examined from the head (oldest first). One that holds its message as text
# is moved: its `message` goes, unchanged, to the tail of its `queue`, and the entry
# leaves the list. A durable event's entry (it names a `stream`) stays, counted in
# `events`: it goes back to its stream afterwards (see requeue_dead_events). Any other
# entry (binary, unreadable, or naming a key that is not a list) is skipped and stays,
# in its place; so does one naming a queue not in KEYS (on a cluster, in another slot:
# requeue_dead_letters moves those), uncounted. The scan is bounded by the list's
# length, all reads come before the first write, and Redis runs the script atomically:
# each entry ends up either requeued or still here, never both, never neither.
REQUEUE_SCRIPT = """
local dead = KEYS[1]
local limit = tonumber(ARGV[1])
local total = redis.call('LLEN', dead)
local moves, kept, queue_usable, declared = {}, {}, {}, {}
local scanned, skipped, events = 0, 0, 0
for index = 2, #KEYS do declared[KEYS[index]] = true end

-- The entry's queue and message; or nil and whether it can never be requeued.
local function destination(entry)
  local ok, decoded = pcall(cjson.decode, entry)
  if not ok or type(decoded) ~= 'table' then return nil, true end
  if type(decoded['stream']) == 'string' then return 'stream' end
  local queue, message = decoded['queue'], decoded['message']
  if type(queue) ~= 'string' or queue == '' or queue == dead then return nil, true end
  if type(message) ~= 'string' then return nil, true end
  if not declared[queue] then return nil, false end
  if queue_usable[queue] == nil then
    local kind = redis.call('TYPE', queue)['ok']
    queue_usable[queue] = (kind == 'list' or kind == 'none')
  end
  if not queue_usable[queue] then return nil, true end
  return queue, message
end

while scanned < total and (limit == 0 or #moves < limit) do
  local batch = redis.call('LRANGE', dead, scanned, scanned + 99)
  if #batch == 0 then break end
  for _, entry in ipairs(batch) do
    if limit > 0 and #moves >= limit then break end
    scanned = scanned + 1
    local queue, message = destination(entry)
    if queue == 'stream' then
      kept[#kept + 1] = entry
      events = events + 1
    elseif queue then
      moves[#moves + 1] = {queue, message}
    else
      if message then skipped = skipped + 1 end
      kept[#kept + 1] = entry
    end
  end
end

if #moves > 0 then
  for _, move in ipairs(moves) do
    redis.call('RPUSH', move[1], move[2])
  end
  -- Drop the scanned part, then put the skipped entries back at the head, in order.
  redis.call('LTRIM', dead, scanned, -1)
  for index = #kept, 1, -1 do
    redis.call('LPUSH', dead, kept[index])
  end
end
return {#moves, skipped, redis.call('LLEN', dead), events}
"""


# -- the operations ------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    """One dead-letter entry, decoded; ``raw`` is the message exactly as the worker got it."""

    reason: str
    queue: str
    time: float | None
    raw: bytes
    requeueable: bool
    # The entry's JSON members, for --json; binary messages as message_base64.
    members: dict[str, Any] = field(repr=False, compare=False)

    @property
    def text(self) -> str | None:
        """The message as text, or None when it is not valid UTF-8."""
        try:
            return self.raw.decode("utf-8")
        except UnicodeDecodeError:
            return None

    @classmethod
    def from_entry(cls, entry: bytes) -> DeadLetter:
        """Decode a stored entry; an entry no worker could have written is kept, not fatal."""
        members = _json_object(entry)
        if members is None:
            return cls._unreadable(entry)
        message = members.get("message")
        if isinstance(message, str):
            try:
                raw = message.encode("utf-8")
            except UnicodeEncodeError:
                # Lua's cjson writes bytes as they are: show those as base64, like a worker.
                raw = message.encode("utf-8", "surrogateescape")
                members = {key: value for key, value in members.items() if key != "message"}
                members["message_base64"] = base64.b64encode(raw).decode("ascii")
        elif isinstance(members.get("message_base64"), str):
            try:
                raw = base64.b64decode(members["message_base64"], validate=True)
            except binascii.Error:
                return cls._unreadable(entry)
        else:
            raw = b""
        # A durable event's entry names its stream instead of a queue.
        queue = members.get("queue", members.get("stream"))
        at = members.get("time")
        return cls(
            reason=str(members.get("reason", "")),
            queue=queue if isinstance(queue, str) else "",
            time=float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else None,
            raw=raw,
            requeueable=isinstance(message, str) and isinstance(queue, str) and bool(queue),
            members=members,
        )

    @classmethod
    def _unreadable(cls, entry: bytes) -> DeadLetter:
        members = {"reason": UNREADABLE_REASON, "entry_base64": base64.b64encode(entry).decode()}
        return cls(UNREADABLE_REASON, "", None, entry, False, members)


def _json_object(entry: bytes) -> dict[str, Any] | None:
    """The entry's JSON object, also when Lua's cjson wrote raw non-UTF-8 bytes into it."""
    try:
        decoded = protocol.loads(entry)
    except ValueError:
        try:
            decoded = json.loads(entry.decode("utf-8", "surrogateescape"))
        except ValueError:
            return None
    return decoded if isinstance(decoded, dict) else None


@dataclass(frozen=True)
class RequeueResult:
    """What one requeue did: ``skipped`` entries were examined and could not be requeued."""

    requeued: int
    skipped: int
    left: int


def count_dead_letters(
    connection: RedisClient, service: str, prefix: str = protocol.DEFAULT_PREFIX
) -> int:
    """How many dead letters the service has."""
    return connection.llen(protocol.dead_letter_key(service, prefix))


def list_dead_letters(
    connection: RedisClient,
    service: str,
    prefix: str = protocol.DEFAULT_PREFIX,
    limit: int | None = None,
) -> list[DeadLetter]:
    """The service's dead letters, newest last; with ``limit``, only the newest ``limit``."""
    _check_limit(limit)
    start = -limit if limit is not None else 0
    entries = connection.lrange(protocol.dead_letter_key(service, prefix), start, -1)
    return [DeadLetter.from_entry(_as_bytes(entry)) for entry in entries]


def requeue_dead_letters(
    connection: RedisClient,
    service: str,
    prefix: str = protocol.DEFAULT_PREFIX,
    limit: int | None = None,
) -> RequeueResult:
    """Push dead messages back onto their queues, oldest first, in one atomic script;
    then dead events back into their streams (:func:`requeue_dead_events`).

    Each message goes back exactly as it was first received, to the tail of the queue
    it was popped from. Binary and unreadable entries stay in the list, in order. With
    ``limit``, at most that many messages are requeued.

    On a Redis Cluster, a queue in another hash slot than the list (one named without
    the service's hash tag) cannot be written by the same script: its messages are
    requeued after the others, each pushed and then removed from the list, so that a
    crash between the two repeats a message and never loses one.
    """
    _check_limit(limit)
    dead = protocol.dead_letter_key(service, prefix)
    letters = [DeadLetter.from_entry(_as_bytes(entry)) for entry in connection.lrange(dead, 0, -1)]
    queues = list(
        dict.fromkeys(
            letter.queue
            for letter in letters
            if letter.requeueable and not isinstance(letter.members.get("stream"), str)
        )
    )
    elsewhere = [queue for queue in queues if not _same_slot(connection, queue, dead)]
    local = [queue for queue in queues if queue not in elsewhere]
    script = connection.register_script(REQUEUE_SCRIPT)
    requeued, skipped, left, events = map(int, script(keys=[dead, *local], args=[limit or 0]))
    if elsewhere and (limit is None or requeued < limit):
        room = None if limit is None else limit - requeued
        more, refused = _requeue_one_by_one(connection, dead, set(elsewhere), room)
        requeued, skipped, left = requeued + more, skipped + refused, int(connection.llen(dead))
    if events and (limit is None or requeued < limit):
        room = None if limit is None else limit - requeued
        more, refused = requeue_dead_events(connection, dead, room)
        requeued, skipped, left = requeued + more, skipped + refused, int(connection.llen(dead))
    return RequeueResult(requeued, skipped, left)


def _requeue_one_by_one(
    connection: RedisClient, dead: str, queues: set[str], limit: int | None
) -> tuple[int, int]:
    """Requeue the entries naming ``queues`` (in other slots than ``dead``): push, then
    remove. How many were requeued, and how many skipped (a queue that is not a list)."""
    requeued = skipped = 0
    usable: dict[str, bool] = {}
    for entry in connection.lrange(dead, 0, -1):
        letter = DeadLetter.from_entry(_as_bytes(entry))
        if not letter.requeueable or letter.queue not in queues:
            continue
        if limit is not None and requeued >= limit:
            break
        if letter.queue not in usable:
            usable[letter.queue] = _as_bytes(connection.type(letter.queue)) in (b"list", b"none")
        if not usable[letter.queue]:
            skipped += 1
            continue
        connection.rpush(letter.queue, letter.raw)
        connection.lrem(dead, 1, entry)  # type: ignore[arg-type]
        requeued += 1
    return requeued, skipped


def _same_slot(connection: RedisClient, key: str, other: str) -> bool:
    """Whether a script may touch both keys: always, unless on a cluster."""
    return not isinstance(connection, redis.RedisCluster) or slot_of(key) == slot_of(other)


def _as_bytes(value: bytes | str) -> bytes:
    """What a client made with decode_responses=True hands back as text, as bytes."""
    return value if isinstance(value, bytes) else value.encode("utf-8")


def requeue_dead_events(
    connection: RedisClient, dead_key: str, limit: int | None = None
) -> tuple[int, int]:
    """Put dead durable events back into the streams they came from, oldest first, each
    addressed to its service alone (the entry's ``for`` field: the stream's other
    consumer groups acknowledge it unhandled). How many went back, and how many could
    not (binary, or a stream key that holds another type), which stay.

    The stream is in another hash slot than the dead letters, so this is no atomic
    script: each event is added to its stream before its entry leaves the list, and an
    interruption between the two can only requeue it twice, never lose it."""
    moved = unusable = 0
    entries: list[Any] = connection.lrange(dead_key, 0, -1)
    for entry in entries:
        if limit is not None and moved >= limit:
            break
        letter = _json_object(entry if isinstance(entry, bytes) else entry.encode())
        if letter is None or not isinstance(letter.get("stream"), str):
            continue
        fields = wire.requeue_fields(letter)
        kind = connection.type(letter["stream"])
        if fields is None or (kind.decode() if isinstance(kind, bytes) else kind) not in (
            "stream",
            "none",
        ):
            unusable += 1
            continue
        connection.xadd(letter["stream"], fields)  # type: ignore[arg-type]
        if connection.lrem(dead_key, 1, entry):
            moved += 1
    return moved, unusable


def purge_dead_letters(
    connection: RedisClient, service: str, prefix: str = protocol.DEFAULT_PREFIX
) -> int:
    """Delete the service's dead letters; how many there were, counted atomically with it."""
    key = protocol.dead_letter_key(service, prefix)
    with connection.pipeline(transaction=True) as pipe:
        pipe.llen(key)
        pipe.delete(key)
        removed, _ = pipe.execute()
    return int(removed)


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError("limit must be at least 1")


# -- presenting ----------------------------------------------------------------------


def format_line(letter: DeadLetter) -> str:
    """One line for a person: when (UTC), where from, why, and the start of the message."""
    message: str | bytes = letter.text if letter.text is not None else letter.raw
    return "  ".join(
        [
            iso_time(letter.time),
            printable(letter.queue) or "-",
            printable(letter.reason, REASON_WIDTH),
            printable(message, MESSAGE_WIDTH),
        ]
    )


def format_json(letter: DeadLetter) -> str:
    """The entry as one line of JSON, as stored (binary messages as message_base64)."""
    return protocol.dumps(letter.members).decode("utf-8")


def iso_time(at: float | None) -> str:
    """ISO-8601 UTC to the millisecond, e.g. 2026-01-01T12:00:00.123Z."""
    if at is None:
        return "-"
    try:
        moment = datetime.fromtimestamp(at, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return repr(at)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def plural(count: int, noun: str) -> str:
    """'1 message', '2 messages': output read by people should read well."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# -- the command line -----------------------------------------------------------------


def positive_int(text: str) -> int:
    """An argparse type: a limit of 0 or less would silently do nothing."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def service_name(text: str) -> str:
    """An argparse type: an empty name would address the key ``<prefix>:dead:``."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def add_dead_commands(
    groups: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """``rpc-admin dead ACTION SERVICE``; the common options are accepted after ACTION."""
    dead = groups.add_parser(
        "dead",
        help="a service's dead letters",
        description="Act on the dead-letter list <prefix>:dead:{<service>} of a service.",
    )
    actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    service = argparse.ArgumentParser(add_help=False, parents=[common])
    service.add_argument("service", type=service_name, metavar="SERVICE", help="service name")
    common = service

    count = actions.add_parser("count", parents=[common], help="print how many there are")
    count.set_defaults(action_function=run_count)

    listing = actions.add_parser("list", parents=[common], help="print them, oldest first")
    listing.add_argument(
        "--limit", type=positive_int, metavar="N", help="only the newest N entries"
    )
    listing.add_argument("--json", action="store_true", help="one JSON entry per line")
    listing.set_defaults(action_function=run_list)

    requeue = actions.add_parser(
        "requeue", parents=[common], help="push the messages back onto their queues"
    )
    requeue.add_argument(
        "--limit", type=positive_int, metavar="N", help="requeue at most N (the oldest)"
    )
    requeue.set_defaults(action_function=run_requeue)

    purge = actions.add_parser("purge", parents=[common], help="delete them all")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(action_function=run_purge)


def run_count(connection: RedisClient, args: argparse.Namespace) -> int:
    """Print the bare number, for scripts and monitoring checks."""
    print(count_dead_letters(connection, args.service, args.prefix))
    return EXIT_OK


def run_list(connection: RedisClient, args: argparse.Namespace) -> int:
    """Print one line per entry, oldest first: for people, or JSON for tools."""
    letters = list_dead_letters(connection, args.service, args.prefix, args.limit)
    present = format_json if args.json else format_line
    for letter in letters:
        print(present(letter))
    return EXIT_OK


def run_requeue(connection: RedisClient, args: argparse.Namespace) -> int:
    """Requeue, then say what moved and what stayed behind."""
    result = requeue_dead_letters(connection, args.service, args.prefix, args.limit)
    key = protocol.dead_letter_key(args.service, args.prefix)
    line = f"requeued {plural(result.requeued, 'message')} from {key}; {result.left} left"
    if result.skipped:
        line += f" ({result.skipped} skipped: binary, unreadable or queue not a list)"
    print(line)
    return EXIT_OK


def run_purge(connection: RedisClient, args: argparse.Namespace) -> int:
    """Delete the list, but only when the user has said so (--yes or on the terminal)."""
    key = protocol.dead_letter_key(args.service, args.prefix)
    if not args.yes:
        stdin = sys.stdin
        if stdin is None or not stdin.isatty():
            raise UsageError("purge needs --yes when stdin is not a terminal")
        count = count_dead_letters(connection, args.service, args.prefix)
        question = f"remove {plural(count, 'dead letter')} from {key}? [y/N] "
        if not confirm(question, stdin, sys.stderr):
            raise UsageError("not purged")
    removed = purge_dead_letters(connection, args.service, args.prefix)
    print(f"removed {plural(removed, 'dead letter')} from {key}")
    return EXIT_OK


def confirm(question: str, answers: TextIO, prompts: TextIO) -> bool:
    """Ask on the terminal; only 'y' or 'yes' is a yes."""
    prompts.write(question)
    prompts.flush()
    try:
        answer = answers.readline()
    except (EOFError, KeyboardInterrupt):
        answer = ""
    return answer.strip().lower() in ("y", "yes")
