"""Exceptions, and the JSON-RPC error codes they stand for, in both directions.

A handler raises :class:`RpcError` (or a subclass) to reply with that error; a client
raises the same classes when a reply carries an error, so one ``except`` works on
both sides of the wire.
"""

from __future__ import annotations

import enum
import ssl
from typing import Any

import redis.asyncio.sentinel
import redis.exceptions
import redis.sentinel

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Implementation-defined server errors (-32000 to -32099).
SERVER_ERROR = -32000
TIME_LIMIT_EXCEEDED = -32001
STREAMING_REQUIRED = -32002
STREAMING_UNSUPPORTED = -32003


class RpcRedisError(Exception):
    """Base class of every exception this library raises."""


class RpcError(RpcRedisError):
    """A JSON-RPC error: raised by a handler to reply with it, raised by a client on receipt.

    Application errors should use codes outside -32768..-32000, which JSON-RPC reserves.
    """

    default_code: int = INTERNAL_ERROR
    default_message: str = "Internal error"

    def __init__(
        self, message: str | None = None, data: Any = None, *, code: int | None = None
    ) -> None:
        self.code = self.default_code if code is None else code
        self.message = self.default_message if message is None else message
        self.data = data
        super().__init__(self.code, self.message, self.data)

    def __str__(self) -> str:
        text = f"[{self.code}] {self.message}"
        return text if self.data is None else f"{text}: {self.data!r}"

    def to_error_object(self) -> dict[str, Any]:
        """The JSON-RPC ``error`` member for this exception."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class ParseError(RpcError):
    default_code = PARSE_ERROR
    default_message = "Parse error"


class InvalidRequest(RpcError):
    default_code = INVALID_REQUEST
    default_message = "Invalid request"


class MethodNotFound(RpcError):
    default_code = METHOD_NOT_FOUND
    default_message = "Method not found"


class InvalidParams(RpcError):
    default_code = INVALID_PARAMS
    default_message = "Invalid params"


class InternalError(RpcError):
    default_code = INTERNAL_ERROR
    default_message = "Internal error"


class TimeLimitExceeded(RpcError):
    """The handler ran past its time limit; the worker replied without waiting for it."""

    default_code = TIME_LIMIT_EXCEEDED
    default_message = "Time limit exceeded"


class StreamingRequired(RpcError):
    """The method is a generator: call it as a stream (``proxy.stream.method(...)``)."""

    default_code = STREAMING_REQUIRED
    default_message = "Method streams its results"


class StreamingUnsupported(RpcError):
    """The method is not a generator: call it plainly, not as a stream."""

    default_code = STREAMING_UNSUPPORTED
    default_message = "Method does not stream"


_ERRORS_BY_CODE: dict[int, type[RpcError]] = {
    cls.default_code: cls
    for cls in (
        ParseError,
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        InternalError,
        TimeLimitExceeded,
        StreamingRequired,
        StreamingUnsupported,
    )
}


def error_from_object(error: Any) -> RpcError:
    """The exception for a reply's ``error`` member; tolerant of malformed members."""
    if not isinstance(error, dict):
        return InternalError("Malformed error in reply", data=error)
    code = error.get("code")
    message = error.get("message")
    if not isinstance(code, int) or isinstance(code, bool):
        return InternalError("Malformed error in reply", data=error)
    cls = _ERRORS_BY_CODE.get(code, RpcError)
    if message is not None and not isinstance(message, str):
        message = str(message)
    return cls(message, error.get("data"), code=code)  # no message: the class's default


class RpcTimeout(RpcRedisError, TimeoutError):
    """No reply arrived within the call's timeout."""

    def __init__(self, service: str, method: str, waited: float) -> None:
        self.service = service
        self.method = method
        self.waited = waited
        super().__init__(f"no reply from service {service!r} to {method!r} within {waited:.3f}s")


class RpcConnectionError(RpcRedisError, ConnectionError):
    """Redis could not be reached, or the connection broke during a call."""


class RpcConfigurationError(RpcConnectionError):
    """Redis will not serve us as configured, and retrying cannot help: wrong or missing
    credentials, a command the ACL forbids, a database the server lacks, a failed TLS
    handshake, a malformed URL."""


class TlsMismatchError(redis.exceptions.RedisError):
    """TLS was asked for (``rediss://``) and the server speaks plaintext. Not a
    ConnectionError, so that no retry schedule waits it out."""


# -- what a Redis failure means ------------------------------------------------------


class RedisFailure(enum.Enum):
    """What a failed Redis command means for whoever sent it; every part of the library
    decides by this, so a client and a worker never disagree about an error."""

    TIMEOUT = "timeout"  # no answer in time: the connection's state is unknown
    OUTAGE = "outage"  # unreachable, or the connection broke: wait, then retry
    REFUSED = "refused"  # an error reply to one command (WRONGTYPE, OOM...): not retried as is
    CONFIGURATION = "configuration"  # credentials, ACL, database, TLS: retrying cannot help


_CONFIGURATION_ERRORS = (
    redis.exceptions.AuthenticationError,  # wrong password, unknown user, NOAUTH
    redis.exceptions.AuthorizationError,
    redis.exceptions.NoPermissionError,  # NOPERM: the ACL forbids a command or key
)
# Error replies that say the server will not serve this client at all.
_CONFIGURATION_REPLIES = ("DB index is out of range", "invalid DB index", "NOAUTH", "WRONGPASS")


class UnknownSentinelPrimary(Exception):
    """The sentinels that answered monitor no primary of the name asked for: a
    mistyped name in the URL, not a failover (a primary being replaced is still
    monitored, only not healthy). Raised beside redis-py's MasterNotFoundError."""


# How redis-py's MasterNotFoundError names a sentinel that refused the credentials.
_REFUSED = "AuthenticationError"
_NO_PRIMARY = (redis.sentinel.MasterNotFoundError, redis.asyncio.sentinel.MasterNotFoundError)
# A cluster between two states (a failover, a slot half-migrated, a node loading):
# it passes by itself, as an outage does.
_CLUSTER_PASSING = (
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.BusyLoadingError,
)
# Everything a Redis command can fail with, from redis-py or the socket beneath it:
# classify_redis_error gives each a meaning, so none needs to leave the library raw.
REDIS_FAILURES = (redis.exceptions.RedisError, OSError)


def classify_redis_error(error: BaseException) -> RedisFailure | None:
    """What a failure from redis-py (or the socket beneath it) means; None if it is not
    a Redis failure at all (a bug, a cancellation), which callers must not swallow."""
    if isinstance(error, _CONFIGURATION_ERRORS):
        return RedisFailure.CONFIGURATION
    if isinstance(error, TlsMismatchError) or isinstance(error.__cause__, TlsMismatchError):
        return RedisFailure.CONFIGURATION  # redis-py's asyncio connect wraps it
    if isinstance(error, UnknownSentinelPrimary) or isinstance(
        error.__cause__, UnknownSentinelPrimary
    ):
        return RedisFailure.CONFIGURATION
    if isinstance(error, _NO_PRIMARY) and _REFUSED in str(error):
        return RedisFailure.CONFIGURATION  # the sentinels refused our credentials
    if isinstance(error, _CLUSTER_PASSING):
        return RedisFailure.OUTAGE
    if isinstance(error, (ssl.SSLError, ssl.CertificateError)) or isinstance(
        error.__context__, (ssl.SSLError, ssl.CertificateError)
    ):
        return RedisFailure.CONFIGURATION
    if isinstance(error, redis.exceptions.ResponseError):
        message = str(error)
        if message.startswith(_CONFIGURATION_REPLIES):
            return RedisFailure.CONFIGURATION
        return RedisFailure.REFUSED
    if isinstance(error, (redis.exceptions.TimeoutError, TimeoutError)):
        return RedisFailure.TIMEOUT
    if isinstance(error, (redis.exceptions.ConnectionError, OSError)):
        return RedisFailure.OUTAGE
    if isinstance(error, redis.exceptions.InvalidResponse):  # the stream is garbled
        return RedisFailure.OUTAGE
    if isinstance(error, redis.exceptions.RedisError):  # DataError...: not sent as it is
        return RedisFailure.REFUSED
    return None


def refusal_text(error: BaseException) -> str:
    """A Redis error reply as text that says what kind it is: redis-py keeps a reply's
    code (OOM, NOPERM, EXECABORT...) only in the class of the exception it raises."""
    if type(error) is redis.exceptions.ResponseError:
        return str(error)  # WRONGTYPE and the like keep their code in the text
    return f"{type(error).__name__}: {error}"


def redis_error(error: BaseException, where: str, doing: str) -> RpcRedisError:
    """The library's own exception for a Redis failure, caused by it.

    ``where`` names Redis for people and must already be redacted (see
    ``connection.redact_url``); ``doing`` says what failed, e.g. "the call".
    A timeout maps to RpcConnectionError here: a caller that knows the service and
    method raises RpcTimeout instead.
    """
    failure = classify_redis_error(error)
    said = describe_redis_error(error)
    mapped: RpcRedisError
    if failure is RedisFailure.CONFIGURATION:
        mapped = RpcConfigurationError(f"Redis at {where} refused {doing}: {said}")
    elif failure is RedisFailure.REFUSED:
        mapped = RpcRedisError(f"Redis at {where} refused {doing}: {said}")
    elif failure is RedisFailure.TIMEOUT:
        mapped = RpcConnectionError(f"Redis at {where} did not answer {doing} in time: {said}")
    else:
        mapped = RpcConnectionError(f"Redis at {where} failed during {doing}: {said}")
    mapped.__cause__ = error
    return mapped


def describe_redis_error(error: BaseException) -> str:
    """What a Redis failure says, short: redis-py's "no master found" carries the repr
    of every sentinel's client; it is told here by what each sentinel answered."""
    text = str(error)
    if not isinstance(error, _NO_PRIMARY) or isinstance(error, UnknownSentinelPrimary):
        return text
    found, _, answers = text.partition(" : ")
    kinds = [answer.rsplit(" - ", 1)[-1].rsplit(":", 1)[-1] for answer in answers.split(", <")]
    if not answers:
        return f"{found} (no sentinel monitors a primary of that name, or it is down)"
    if all(kind.startswith(_REFUSED) for kind in kinds):
        return f"{found}: every sentinel refused the credentials (see ?sentinel_password=)"
    return f"{found}: the sentinels answered {', '.join(kinds)}"
