"""The worker's own work for one call, in process and without I/O: screening the
message, dispatching it, answering, and the hooks. What a feature adds to a call shows
here in tenths of a microsecond, where the end-to-end rows move by tens.

    python -m bench.dispatch
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from rpc_redis import Worker, protocol
from rpc_redis.middleware import run_hooks
from rpc_redis.worker.handling import Outcome

from . import service as bench_service

PAYLOAD = "x" * 100


def one_call(worker: Worker) -> Callable[[], object]:
    """The worker's path for one echo request, as a receiving thread runs it."""
    [queue] = worker.by_queue
    dispatcher = worker.dispatchers[queue]
    request = protocol.request_object("echo", [PAYLOAD], "c0ffee")
    raw = protocol.encode_envelope(request, "rpc:reply:bench", time.time() + 3600)

    def call() -> object:
        screened = worker.handling.screen(queue, raw)
        assert not isinstance(screened, Outcome)
        response = dispatcher.dispatch_in_thread(screened.payload, screened.deadline, screened.meta)
        outcome = worker.handling.answer(queue, screened, response)
        run_hooks(worker.hooks.after_reply_written, queue)
        return outcome

    return call


def costs(calls: int = 20_000, rounds: int = 7) -> dict[str, float]:
    """Microseconds per call, the least of ``rounds`` alternating rounds, by variant."""
    paths = {
        name: one_call(Worker(served, "redis://127.0.0.1:1/0"))
        for name, served in (("def", bench_service.service), ("validated", bench_service.validated))
    }
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, call in paths.items():
            started = time.perf_counter()
            for _ in range(calls):
                call()
            samples[name].append((time.perf_counter() - started) / calls * 1e6)
    return {name: min(values) for name, values in samples.items()} | {
        f"{name} median": statistics.median(values) for name, values in samples.items()
    }


def report(calls: int = 20_000) -> str:
    found = costs(calls)
    return (
        f"worker path per call, in process without I/O (least of 7 rounds): def "
        f"{found['def']:.1f} µs, validated {found['validated']:.1f} µs "
        f"({found['validated'] - found['def']:+.1f} µs for validation)"
    )


if __name__ == "__main__":
    print(report())
