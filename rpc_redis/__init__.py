"""JSON-RPC 2.0 between services over Redis lists.

Serve plain functions with :class:`Service` and ``rpc-worker``; call them through
:class:`Client` proxies. The wire protocol is in docs/protocol.md.
"""

from .client import AsyncBatch, AsyncClient, Batch, BatchResult, Client, ServiceProxy
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
    TimeLimitExceeded,
)
from .middleware import Middleware
from .service import Service
from .worker import Worker, WorkerThread

__all__ = [
    "AsyncBatch",
    "AsyncClient",
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
    "TimeLimitExceeded",
    "Worker",
    "WorkerThread",
    "current_call",
]
