"""TLS on loopback: certificates made per run, and a TLS endpoint in front of a server.

No pip-installable redis-server is built with TLS, so :class:`TlsProxy` runs
``tls_proxy.py`` as its own process (started and stopped by its pid) in front of an
embedded server; redis-py meets a real TLS handshake, certificate checks included.
Certificates come from ``trustme`` (a dev dependency, imported only when asked for).

    certificates = make_certificates(directory)
    with TlsRedis(certificates) as server:
        redis.Redis.from_url(server.url, ssl_ca_certs=str(certificates.ca_cert)).ping()
"""

from __future__ import annotations

import contextlib
import selectors
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from ..embedded import EmbeddedRedis
from .nodes import Address, TopologyError, address_of

PROXY_SCRIPT = Path(__file__).with_name("tls_proxy.py")
START_TIMEOUT = 10.0
SERVER_IDENTITIES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for one run, by the names redis-py gives them (``ssl_ca_certs``, ...)."""

    ca_cert: Path  # the private CA that signed the server's and the client's certificates
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path  # an unrelated CA: trusting it instead must fail verification

    def query(self, *, client_certificate: bool = False) -> str:
        """``?ssl_ca_certs=...`` (and the client's pair) for a ``rediss://`` URL."""
        parameters = {"ssl_ca_certs": str(self.ca_cert)}
        if client_certificate:
            parameters["ssl_certfile"] = str(self.client_cert)
            parameters["ssl_keyfile"] = str(self.client_key)
        return "?" + urlencode(parameters)


def make_certificates(directory: Path) -> TlsFiles:
    """A private CA, a server certificate for 127.0.0.1 and localhost, a client
    certificate, and a second, unrelated CA; written as PEM files into ``directory``."""
    import trustme  # a dev dependency: only tests make certificates

    authority, other_authority = trustme.CA(), trustme.CA()
    server = authority.issue_cert(*SERVER_IDENTITIES)
    client = authority.issue_cert("rpc-redis-client")
    files = TlsFiles(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca_cert=directory / "other-ca.pem",
    )
    authority.cert_pem.write_to_path(str(files.ca_cert))
    other_authority.cert_pem.write_to_path(str(files.other_ca_cert))
    for issued, cert, key in ((server, files.server_cert, files.server_key),
                              (client, files.client_cert, files.client_key)):  # fmt: skip
        issued.private_key_pem.write_to_path(str(key))
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    return files


class TlsProxy:
    """A TLS endpoint on loopback relaying to ``target``; its own process, by pid.

    With ``require_client_certificate``, only clients showing a certificate signed by
    the run's CA get through (mutual TLS).
    """

    def __init__(
        self,
        target: Address,
        certificates: TlsFiles,
        *,
        require_client_certificate: bool = False,
        host: str = "127.0.0.1",
    ) -> None:
        self.target = target
        self.certificates = certificates
        self.require_client_certificate = require_client_certificate
        self.host = host
        self.port: int | None = None
        self.process: subprocess.Popen[str] | None = None
        self._directory = tempfile.TemporaryDirectory(prefix="rpc-redis-tls-")
        self.log_path = Path(self._directory.name) / "tls-proxy.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def url(self) -> str:
        return f"rediss://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        files = self.certificates
        command = [
            sys.executable, str(PROXY_SCRIPT),
            "--target", f"{self.target[0]}:{self.target[1]}",
            "--host", self.host,
            "--port", str(self.port or 0),
            "--cert", str(files.server_cert),
            "--key", str(files.server_key),
        ]  # fmt: skip
        if self.require_client_certificate:
            command += ["--client-ca", str(files.ca_cert)]
        return command

    def start(self, timeout: float = START_TIMEOUT) -> TlsProxy:
        """Start the proxy and return once it listens (it says where, on its stdout)."""
        if self.process is not None and self.process.poll() is None:
            return self
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                text=True,
            )  # fmt: skip
        try:
            line = self._first_line(timeout)
        except BaseException:
            self.stop()
            raise
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def _first_line(self, timeout: float) -> str:
        assert self.process is not None and self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while not selector.select(max(0.0, deadline - time.monotonic())):
                if time.monotonic() >= deadline:
                    raise TopologyError(f"tls-proxy not listening within {timeout}s")
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            self.process.wait(timeout)
            raise TopologyError(f"tls-proxy did not start: {self.log_path.read_text()[-2000:]}")
        return line.strip()

    def kill(self) -> None:
        """SIGKILL the proxy; its clients' connections break as a lost network would."""
        if self.process is not None:
            self.process.kill()
        self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the proxy by its pid and wait; SIGKILL it if it does not exit in time."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            self._directory.cleanup()

    def __enter__(self) -> TlsProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class TlsRedis:
    """An embedded redis-server reachable only through a :class:`TlsProxy` (its plain
    port stays on loopback, for looking at it from a test)."""

    def __init__(
        self,
        certificates: TlsFiles,
        *,
        require_client_certificate: bool = False,
        executable: str | None = None,
    ) -> None:
        self.certificates = certificates
        self.server = EmbeddedRedis(executable=executable)
        self.proxy = TlsProxy(
            address_of(self.server),
            certificates,
            require_client_certificate=require_client_certificate,
        )

    @property
    def url(self) -> str:
        """``rediss://127.0.0.1:PORT/0``: give redis-py ``ssl_ca_certs`` (and a client pair)."""
        return self.proxy.url

    def url_with_certificates(self, *, client_certificate: bool = False) -> str:
        """The URL with the CA (and the client's pair) as redis-py query parameters."""
        return self.url + self.certificates.query(client_certificate=client_certificate)

    @property
    def pids(self) -> list[int]:
        return [pid for pid in (self.server.pid, self.proxy.pid) if pid is not None]

    def start(self) -> TlsRedis:
        try:
            self.server.start()
            self.proxy.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        self.proxy.close()
        self.server.close()

    def __enter__(self) -> TlsRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
