"""A worker on a thread of its own, or on a fresh event loop: for tests, and for
embedding a worker in a program that is not asyncio."""

from __future__ import annotations

import asyncio
import threading

from .lifecycle import Worker


def run_worker(worker: Worker) -> None:
    """Run a worker on a fresh event loop until it is stopped."""
    asyncio.run(worker.run())


class WorkerThread:
    """A worker on its own thread and event loop: for tests and embedding in sync apps.

    >>> with WorkerThread(Worker(service, url)) as worker:
    ...     client.proxy("calculator").add(1, 2)
    """

    def __init__(self, worker: Worker, start_timeout: float = 10.0) -> None:
        self.worker = worker
        self.start_timeout = start_timeout
        self.error: BaseException | None = None  # what ended the worker's run, if not a stop
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            run_worker(self.worker)
        except BaseException as exc:
            self.error = exc

    def start(self) -> WorkerThread:
        """Start and wait until the worker receives; raise what stopped it, if it failed."""
        self._thread.start()
        deadline_reached = not self._wait_ready_or_stopped()
        if self.error is not None:
            self._thread.join(self.start_timeout)
            raise self.error
        if deadline_reached or not self.worker.ready.is_set():
            self.stop()
            raise RuntimeError(f"worker not ready within {self.start_timeout}s")
        return self

    def _wait_ready_or_stopped(self) -> bool:
        waited = 0.0
        while waited < self.start_timeout:
            if self.worker.ready.wait(0.05) or self.worker.stopped.is_set():
                return True
            waited += 0.05
        return False

    def stop(self, timeout: float = 30.0) -> None:
        self.worker.stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"worker did not stop within {timeout}s")

    def __enter__(self) -> Worker:
        self.start()
        return self.worker

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
