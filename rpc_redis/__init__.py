"""JSON-RPC 2.0 between services over Redis lists, with events and streamed results.

Serve plain functions with :class:`Service` and ``rpc-worker``; call them through
:class:`Client` proxies, stream a generator's items (``proxy.stream.method()``), publish
and emit events (``client.publish``, ``client.emit``) that ``@service.subscribe`` and
``@service.on`` handlers receive. The wire protocol is in docs/protocol.md.
"""

from .client import (
    AsyncBatch,
    AsyncClient,
    AsyncStream,
    Batch,
    BatchResult,
    Client,
    ServiceProxy,
    Stream,
)
from .context import CallContext, current_call
from .errors import (
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    ParseError,
    RpcConfigurationError,
    RpcConnectionError,
    RpcError,
    RpcRedisError,
    RpcTimeout,
    StreamingRequired,
    StreamingUnsupported,
    TimeLimitExceeded,
)
from .middleware import Middleware
from .service import Service
from .worker import Worker, WorkerThread

__all__ = [
    "AsyncBatch",
    "AsyncClient",
    "AsyncStream",
    "Batch",
    "BatchResult",
    "CallContext",
    "Client",
    "InternalError",
    "InvalidParams",
    "InvalidRequest",
    "MethodNotFound",
    "Middleware",
    "ParseError",
    "RpcConfigurationError",
    "RpcConnectionError",
    "RpcError",
    "RpcRedisError",
    "RpcTimeout",
    "Service",
    "ServiceProxy",
    "Stream",
    "StreamingRequired",
    "StreamingUnsupported",
    "TimeLimitExceeded",
    "Worker",
    "WorkerThread",
    "current_call",
]
