"""Services for the production-topology tests, served in threads and by real rpc-worker
processes: four echoes whose queues hash to different slots, and one that holds a
request long enough to kill its worker."""

from __future__ import annotations

import time

from rpc_redis import Service

NAMES = ("alpha", "beta", "gamma", "delta")


def _echo_service(name: str) -> Service:
    service = Service(name)

    @service.method
    def echo(value: object) -> list[object]:
        return [name, value]

    return service


alpha, beta, gamma, delta = (_echo_service(name) for name in NAMES)
echoes = [alpha, beta, gamma, delta]

held = Service("held")


@held.method
def hold(token: str, seconds: float) -> str:
    """Returns ``token`` after ``seconds``: long enough to kill its worker meanwhile."""
    time.sleep(seconds)
    return token
