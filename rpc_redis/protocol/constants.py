"""Constants of the wire protocol: its version, the default prefix, and the bounds
on one message."""

from __future__ import annotations

ENVELOPE_VERSION = 1
DEFAULT_PREFIX = "rpc"
DEFAULT_REPLY_TTL = 60.0
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# A batch's requests and a reply's bytes: each bounds the work and the memory one
# message can cost, whatever it holds (go-ethereum's JSON-RPC server has a limit of
# 1,000 requests per batch too).
DEFAULT_MAX_BATCH = 1000
DEFAULT_MAX_REPLY_BYTES = 16 * 1024 * 1024
# A message's dead letter keeps only this much of one too large to be read (below).
DEAD_LETTER_HEAD_BYTES = 64 * 1024
MAX_REPLY_KEY_LENGTH = 1024
# The envelope's optional ``meta``: an object of strings, for middleware (trace context,
# tokens), bounded so that it cannot be made to cost more than the request it rides with.
MAX_META_MEMBERS = 32
MAX_META_KEY_LENGTH = 64
MAX_META_VALUE_LENGTH = 1024

JSONRPC = "2.0"
