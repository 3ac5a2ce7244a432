"""rediss:// end to end through a real TLS endpoint (a proxy process in front of the
embedded server, which is built without TLS): verification with the run's private CA
and without, a wrong CA, mutual TLS, and a rediss:// URL pointed at a plaintext port;
each mistake a configuration error in one line, never "no reply from service"."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from urllib.parse import quote

import pytest

from rpc_redis import AsyncClient, Client, RpcConfigurationError, RpcConnectionError
from rpc_redis.embedded import EmbeddedRedis
from rpc_redis.testing import WorkerProcess, serve_in_thread
from rpc_redis.topologies import TlsFiles, TlsRedis
from services.calculator import service as calculator
from tests.conftest import REPOSITORY


def with_parameters(url: str, **parameters: str) -> str:
    joined = "&".join(f"{name}={quote(value, safe='/')}" for name, value in parameters.items())
    return f"{url}{'&' if '?' in url else '?'}{joined}"


def both_clients_add(url: str) -> tuple[object, object]:
    async def add_async() -> object:
        async with AsyncClient(url, timeout=5) as client:
            return await client.proxy("calculator").add(2, 3)

    with Client(url, timeout=5) as client:
        return client.proxy("calculator").add(1, 2), asyncio.run(add_async())


def test_calls_over_tls_verified_with_a_private_ca(tls_redis: TlsRedis) -> None:
    url = tls_redis.url_with_certificates()  # ?ssl_ca_certs=<the run's CA>
    with serve_in_thread(calculator, url):
        assert both_clients_add(url) == (3, 5)


def test_calls_over_tls_with_verification_off(tls_redis: TlsRedis) -> None:
    url = with_parameters(tls_redis.url, ssl_cert_reqs="none")
    with serve_in_thread(calculator, url):
        assert both_clients_add(url) == (3, 5)


def test_a_wrong_ca_is_a_configuration_error_for_clients_and_workers(
    tls_redis: TlsRedis, tls_certificates: TlsFiles
) -> None:
    url = with_parameters(tls_redis.url, ssl_ca_certs=str(tls_certificates.other_ca_cert))
    for make in (Client, AsyncClient):

        async def call(client: AsyncClient) -> object:
            async with client:
                return await client.proxy("calculator").add(1, 2)

        with pytest.raises(RpcConfigurationError, match="certificate verify failed"):
            client = make(url, timeout=5)
            if isinstance(client, Client):
                with client:
                    client.proxy("calculator").add(1, 2)
            else:
                asyncio.run(call(client))
    worker = WorkerProcess(["services.calculator", "--redis-url", url], cwd=REPOSITORY)
    assert worker.start(ready_timeout=0).wait(30) == 2
    assert worker.lines[-1].startswith("rpc-worker: error: ") and "certificate" in worker.output


def test_mutual_tls_with_and_without_a_client_certificate(mtls_redis: TlsRedis) -> None:
    known = mtls_redis.url_with_certificates(client_certificate=True)
    with serve_in_thread(calculator, known):
        assert both_clients_add(known) == (3, 5)
        with Client(mtls_redis.url_with_certificates(), timeout=5) as anonymous:
            # Refused at once. (Redis's own TLS sends the TLS 1.3 alert "certificate
            # required", a configuration error; the proxy's asyncio just closes.)
            started = time.monotonic()
            with pytest.raises(RpcConnectionError, match="closed by server"):
                anonymous.proxy("calculator").add(1, 2)
            assert time.monotonic() - started < 2


def test_rediss_to_a_plaintext_port_says_so_at_once(fresh_redis: EmbeddedRedis) -> None:
    """The handshake waits for an answer a plaintext server never sends: once it gives up
    (here after 0.5 s), the port is seen to speak plaintext, and that is what is said."""
    url = f"rediss://{fresh_redis.host}:{fresh_redis.port}/0?socket_connect_timeout=0.5"
    with Client(url, timeout=10) as client:
        started = time.monotonic()
        with pytest.raises(RpcConfigurationError, match="answers in plaintext, not TLS"):
            client.proxy("calculator").add(1, 2)
        assert time.monotonic() - started < 5  # not the call's 10 s
    worker = WorkerProcess(["services.calculator", "--redis-url", url], cwd=REPOSITORY)
    assert worker.start(ready_timeout=0).wait(30) == 2
    assert "answers in plaintext" in worker.lines[-1]
    admin = subprocess.run(
        [sys.executable, "-m", "rpc_redis.admin", "dead", "count", "calculator", "--redis-url",
         url], capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert admin.returncode == 2 and "answers in plaintext" in admin.stderr


def test_plaintext_to_a_tls_port_says_so_at_once(tls_redis: TlsRedis) -> None:
    """The proxy drops a connection that does not open with a handshake: an outage to a
    worker, which would wait for ever; the port is seen to speak TLS, and that is said."""
    url = f"redis://{tls_redis.proxy.host}:{tls_redis.proxy.port}/0"
    with Client(url, timeout=10) as client:
        started = time.monotonic()
        with pytest.raises(RpcConfigurationError, match="speaks TLS, and this connection"):
            client.proxy("calculator").add(1, 2)
        assert time.monotonic() - started < 5
    worker = WorkerProcess(["services.calculator", "--redis-url", url], cwd=REPOSITORY)
    assert worker.start(ready_timeout=0).wait(30) == 2
    assert "use rediss://" in worker.lines[-1]
