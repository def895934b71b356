"""The embedded Redis of ``make run``: one owner per directory, so two processes never split the histories."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.conftest import reserved_port
from tracker.embedded_redis import AlreadyRunning, EmbeddedRedis, _free_port


def test_a_second_server_on_the_same_directory_is_refused_until_the_first_stops(tmp_path: Path) -> None:
    """A second embedded Redis on one directory would take over its socket and append-only file."""
    # on the directory's unix socket, as `make run` has it (a TCP port chosen now could be taken by the time the
    # second server starts)
    first = EmbeddedRedis(tmp_path / "redis")
    second = EmbeddedRedis(tmp_path / "redis")
    url = first.start()
    try:
        client = redis.Redis.from_url(url)
        client.set("k", "kept")
        with pytest.raises(AlreadyRunning, match="REDIS_URL"):
            second.start()
        assert second.process is None
        assert client.get("k") == b"kept"  # the first server was not disturbed
        client.close()
    finally:
        first.stop()
    try:
        second.start()  # the directory is free again
    finally:
        second.stop()


def test_stitcher_serve_on_a_taken_var_dir_exits_with_a_clear_message(tmp_path: Path) -> None:
    """`stitcher serve --reuse-port` twice without REDIS_URL: the second one says what to do and exits 2."""
    owner = EmbeddedRedis(tmp_path / "redis")
    owner.start()
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        with reserved_port() as port:
            env.update(VAR_DIR=str(tmp_path), HOST="127.0.0.1", PORT=str(port))
            proc = subprocess.run([str(Path(sys.executable).parent / "stitcher"), "serve", "--reuse-port"],
                                  env=env, capture_output=True, timeout=60)
    finally:
        owner.stop()
    assert proc.returncode == 2, proc.stderr.decode()
    assert b"another process already runs the embedded Redis" in proc.stderr
    assert b"REDIS_URL" in proc.stderr


def test_a_server_that_is_not_ours_on_the_chosen_port_is_never_used(tmp_path: Path) -> None:
    """If another process holds the TCP port the embedded Redis chose, start fails rather than handing the
    service someone else's Redis."""
    other = _server_on_some_port(tmp_path / "other")
    try:
        clash = EmbeddedRedis(tmp_path / "clash", port=other.port)
        with pytest.raises(RuntimeError, match="did not start"):
            clash.start(timeout=2)
        assert clash.process is None
        assert redis.Redis.from_url(other.url).ping()  # the other server was left alone
    finally:
        other.stop()


def _server_on_some_port(directory: Path) -> EmbeddedRedis:
    """A redis-server on a TCP port (a free port can be taken by the time it binds: try a few)."""
    for attempt in range(5):
        server = EmbeddedRedis(directory / str(attempt), port=_free_port())
        try:
            server.start()
            return server
        except RuntimeError:
            continue
    raise AssertionError("no free TCP port for a redis-server")
