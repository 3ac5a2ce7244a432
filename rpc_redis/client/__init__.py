"""The calling side: the sync and async clients, their proxies, batches and streams."""

from .aio import AsyncClient
from .batch import AsyncBatch, Batch, BatchResult
from .proxy import ServiceProxy
from .streams import AsyncStream, Stream
from .sync import Client

__all__ = [
    "AsyncBatch",
    "AsyncClient",
    "AsyncStream",
    "Batch",
    "BatchResult",
    "Client",
    "ServiceProxy",
    "Stream",
]
