"""The serving side: the worker's lifecycle, its two ways of receiving, handling,
writing, reliability and the process supervisor."""

from .handling import WorkerStats
from .lifecycle import Worker
from .thread import WorkerThread, run_worker

__all__ = ["Worker", "WorkerStats", "WorkerThread", "run_worker"]
