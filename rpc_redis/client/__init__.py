"""The calling side: the sync and async clients, their proxies and batches."""

from .aio import AsyncBatch, AsyncClient
from .proxy import BatchResult, ServiceProxy
from .sync import Batch, Client

__all__ = ["AsyncBatch", "AsyncClient", "Batch", "BatchResult", "Client", "ServiceProxy"]
