"""The calling side: the sync and async clients, their proxies and batches."""

from .aio import AsyncClient
from .batch import AsyncBatch, Batch, BatchResult
from .proxy import ServiceProxy
from .sync import Client

__all__ = ["AsyncBatch", "AsyncClient", "Batch", "BatchResult", "Client", "ServiceProxy"]
