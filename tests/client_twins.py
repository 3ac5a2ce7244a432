"""Both clients behind one synchronous surface, so that every client test runs against
both twins: the AsyncClient runs on an event loop of its own in a helper thread, and
each call from the test's thread waits there for its coroutine."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from rpc_redis import AsyncBatch, AsyncClient, AsyncStream, Client

T = TypeVar("T")
Run = Callable[[Awaitable[Any]], Any]


class Blocking:
    """An awaitable-returning surface (a proxy, its methods, its ``notify``) made blocking."""

    def __init__(self, target: Any, run: Run) -> None:
        self._target = target
        self._run = run

    def __getattr__(self, name: str) -> Blocking:
        return Blocking(getattr(self._target, name), self._run)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        made = self._target(*args, **kwargs)
        if isinstance(made, AsyncStream):  # proxy.stream.method(): iterated, not awaited
            return BlockingStream(made, self._run)
        return self._run(made)


class BlockingStream:
    """An AsyncStream with the sync Stream's surface: each item waits on the loop."""

    def __init__(self, stream: AsyncStream, run: Run) -> None:
        self._stream = stream
        self._run = run

    @property
    def reply_key(self) -> str:
        return self._stream.reply_key

    def __iter__(self) -> BlockingStream:
        return self

    def __next__(self) -> Any:
        try:
            return self._run(self._stream.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        self._run(self._stream.aclose())

    def __enter__(self) -> BlockingStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BlockingBatch:
    """An AsyncBatch with the sync Batch's surface: collecting is plain, sending blocks."""

    def __init__(self, batch: AsyncBatch, run: Run) -> None:
        self._batch = batch
        self._run = run

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def send(self) -> list[Any]:
        return self._run(self._batch.send())  # type: ignore[no-any-return]

    def __enter__(self) -> BlockingBatch:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        self._run(self._batch.__aexit__(exc_type, *rest))


class AsyncOnThread:
    """An AsyncClient, driven from synchronous code; ``close()`` stops its loop."""

    def __init__(self, url: str | None = None, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="async-client")
        self._thread.start()
        try:
            self.client: AsyncClient = self.run(self._create(url, options))
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _create(url: str | None, options: dict[str, Any]) -> AsyncClient:
        return AsyncClient(url, **options)

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result()

    def __getattr__(self, name: str) -> Any:  # url, settings, client_name, reply_key...
        return getattr(self.client, name)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        return self.run(self.client.call(*args, **kwargs))

    def proxy(self, *args: Any, **kwargs: Any) -> Blocking:
        return Blocking(self.client.proxy(*args, **kwargs), self.run)

    def batch(self, *args: Any, **kwargs: Any) -> BlockingBatch:
        return BlockingBatch(self.client.batch(*args, **kwargs), self.run)

    def stream(self, *args: Any, **kwargs: Any) -> BlockingStream:
        return BlockingStream(self.client.stream(*args, **kwargs), self.run)

    def publish(self, *args: Any, **kwargs: Any) -> int:
        return self.run(self.client.publish(*args, **kwargs))

    def emit(self, *args: Any, **kwargs: Any) -> str:
        return self.run(self.client.emit(*args, **kwargs))

    def close(self) -> None:
        if self.loop.is_closed():
            return
        try:
            self.run(self.client.aclose())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()

    def __enter__(self) -> AsyncOnThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


AnyClient = Client | AsyncOnThread


class Twin:
    """One of the two clients, for a parametrized test: ``connect`` makes one with the
    sync surface (closed when the test ends), ``cls`` is the class itself."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.cls: type[Client] | type[AsyncClient] = Client if kind == "sync" else AsyncClient
        self._made: list[AnyClient] = []

    def connect(self, url: str | None = None, **options: Any) -> Any:
        client: AnyClient = (
            Client(url, **options) if self.kind == "sync" else AsyncOnThread(url, **options)
        )
        self._made.append(client)
        return client

    def close_all(self) -> None:
        for client in self._made:
            client.close()

    def __repr__(self) -> str:
        return f"<{self.kind} client>"


@pytest.fixture(name="twin", params=["sync", "async"])
def twin_fixture(request: pytest.FixtureRequest) -> Iterator[Twin]:
    """Each client in turn: every rule a test pins holds for both. A test module
    imports this (``from tests.client_twins import twin_fixture``) to ask for ``twin``."""
    made = Twin(request.param)
    try:
        yield made
    finally:
        made.close_all()
