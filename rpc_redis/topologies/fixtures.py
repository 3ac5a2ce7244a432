"""pytest fixtures for the topologies, each stopping by pid what it started.

Enable them beside ``rpc_redis.testing``:
``pytest_plugins = ["rpc_redis.testing", "rpc_redis.topologies.fixtures"]``.
The topology fixtures take options by indirect parametrization::

    @pytest.mark.parametrize("sentinel_set", [{"password": "secret"}], indirect=True)
    def test_auth_through_sentinel(sentinel_set: SentinelSet) -> None: ...
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .cluster import EmbeddedCluster
from .nodes import UnixSocketRedis
from .sentinel import SentinelSet
from .tls import TlsFiles, TlsRedis, make_certificates


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(getattr(request, "param", None) or {})


@pytest.fixture
def sentinel_set(request: pytest.FixtureRequest) -> Iterator[SentinelSet]:
    """A primary, a replica and three sentinels, started; a test of its own may kill them."""
    with SentinelSet(**_options(request)) as sentinels:
        yield sentinels


@pytest.fixture
def redis_cluster(request: pytest.FixtureRequest) -> Iterator[EmbeddedCluster]:
    """Three primaries with a replica each, ``cluster_state:ok`` on every node."""
    options = {"replicas": 1, **_options(request)}
    with EmbeddedCluster(**options) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def tls_certificates(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """This run's private CA, server and client certificates, and an unrelated CA."""
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_redis(tls_certificates: TlsFiles) -> Iterator[TlsRedis]:
    """An embedded server behind a TLS proxy; ``.url`` is ``rediss://``."""
    with TlsRedis(tls_certificates) as server:
        yield server


@pytest.fixture
def mtls_redis(tls_certificates: TlsFiles) -> Iterator[TlsRedis]:
    """As ``tls_redis``, but a client must show a certificate of the run's CA."""
    with TlsRedis(tls_certificates, require_client_certificate=True) as server:
        yield server


@pytest.fixture
def unix_redis() -> Iterator[UnixSocketRedis]:
    """An embedded server that also listens on a unix socket; ``.unix_url``."""
    server = UnixSocketRedis()
    with server:  # __enter__ is EmbeddedRedis's, typed as the base class
        yield server
