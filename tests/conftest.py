"""Shared fixtures: real Redis and real SQL.

By default each test session starts its own redis-server and uses SQLite files; CI sets
``TEST_REDIS_URL`` / ``TEST_DATABASE_URL`` to run the same tests against the machine's Redis and PostgreSQL,
and ``TEST_REDIS_CLUSTER=1`` to run them on a 3-master Redis Cluster the session starts (tests/redis_cluster.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.redis_cluster import async_client, flush, local_cluster
from tracker.embedded_redis import EmbeddedRedis
from tracker.redis_client import AnyRedis
from tracker.settings import Settings

API_KEY = "test-key"
SQLITE_THREADS_S = 10.0  # a bound against a hang: an aiosqlite thread ends within milliseconds of its last call


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
    """A local port held for as long as the block runs, for a server that binds it with SO_REUSEPORT
    (``stitcher serve --reuse-port``) whenever it gets round to it.

    The held socket is bound but never listens: connections go to the server alone (or are refused while
    there is none), and no other process can be handed the port meanwhile, as it could be if the port were
    picked, released and bound by a subprocess seconds later. (A server in this process binds port 0.)
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


R = TypeVar("R", bound=EmbeddedRedis)


@contextlib.contextmanager
def private_redis(kind: type[R]) -> Iterator[R]:
    """A stopped redis-server (an EmbeddedRedis ``kind``) of the caller's own on a unix socket in a fresh
    short directory; stopped and removed at the end.

    A test that stops its Redis and starts it again needs it back at the same address. A TCP port is free
    for anyone while the server is down, and another process (other tests on the machine) may be handed it;
    the socket's path is not. /tmp keeps the path under the ~107-byte limit of unix socket paths.
    """
    directory = Path(tempfile.mkdtemp(prefix="st-redis-", dir="/tmp"))
    server = kind(directory)
    assert not server.port, f"{server.socket} is too long for a unix socket"
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis for the session: a Redis Cluster of its own with TEST_REDIS_CLUSTER=1, else the one named
    by TEST_REDIS_URL, else a private redis-server on a unix socket, as the service's embedded default has it."""
    if os.environ.get("TEST_REDIS_CLUSTER", "").lower() in ("1", "true", "yes"):
        with local_cluster() as cluster:
            yield cluster.url
        return
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        yield url
        return
    with private_redis(EmbeddedRedis) as server:
        yield server.start()


@pytest.fixture
def clean_redis(redis_url: str) -> str:
    """The session's Redis, emptied for this test (every master of a cluster)."""
    flush(redis_url)
    return redis_url


@pytest.fixture
async def redis_client(clean_redis: str) -> AsyncIterator[AnyRedis]:
    client = async_client(clean_redis)
    yield client
    await client.aclose()


@pytest.fixture
def tracker_settings(clean_redis: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=clean_redis, api_keys=(API_KEY,), var_dir=tmp_path, worker_enabled=False,
                    static_dir=Path(os.environ.get("TMP_STATIC", Settings.static_dir)))


def auth(key: str = API_KEY) -> dict[str, str]:
    """Headers for HTTP Basic auth with an API key as the password (any user name)."""
    import aiohttp

    return {"Authorization": aiohttp.encode_basic_auth("backend", key)}


TABLES = ("send_receipts", "outbox", "messages", "api_events", "export_tombstones", "import_rows", "imports",
          "orders", "timeline", "visitor_links", "group_members", "identifiers", "identity_log", "groups", "contacts")


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A schema migrated once per session: TEST_DATABASE_URL (PostgreSQL) or a SQLite template file."""
    from stitcher.store.migrate import upgrade

    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        _reset_postgres(url)
        upgrade(Settings(database_url=url))
        return url
    path = tmp_path_factory.mktemp("sql") / "template.db"
    upgrade(Settings(database_url=f"sqlite+aiosqlite:///{path}"))
    return f"sqlite+aiosqlite:///{path}"


def _reset_postgres(url: str) -> None:
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def reset() -> None:
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
        await engine.dispose()

    asyncio.run(reset())


@pytest.fixture
def database_url(migrated_database: str, tmp_path: Path) -> str:
    """An empty, migrated database for this test."""
    if migrated_database.startswith("sqlite"):
        template = Path(migrated_database.removeprefix("sqlite+aiosqlite:///"))
        target = tmp_path / "stitcher.db"
        shutil.copy(template, target)
        return f"sqlite+aiosqlite:///{target}"
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def truncate() -> None:
        engine = create_async_engine(migrated_database)
        async with engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        await engine.dispose()

    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, truncate()).result()
    return migrated_database


@pytest.fixture
def settings(clean_redis: str, database_url: str, tmp_path: Path) -> Settings:
    """Settings of the whole service on real Redis and real SQL, the worker running; imports parse their rows
    in the service (a parser process costs each test a start: ``test_imports`` runs one on purpose)."""
    return Settings(redis_url=clean_redis, database_url=database_url, api_keys=(API_KEY,), var_dir=tmp_path,
                    static_dir=Path(os.environ.get("TMP_STATIC", Settings.static_dir)), import_parse_workers=0)


@pytest.fixture
async def client(aiohttp_client, settings: Settings):  # type: ignore[no-untyped-def]
    """A test client of the whole service (tracker + contacts API + worker)."""
    from stitcher.app import init_app

    return await aiohttp_client(init_app(settings))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """pytest-randomly shuffles the tests; its seed is in the header, which ``-q`` (make test) hides."""
    seed = getattr(config.option, "randomly_seed", None)
    if seed is not None and config.pluginmanager.has_plugin("randomly"):
        terminalreporter.write_line(f"random test order (pytest-randomly): rerun it with --randomly-seed={seed}")


def _sqlite_threads() -> list[threading.Thread]:
    """The live threads of aiosqlite connections (each connection runs its calls on a thread of its own)."""
    return [t for t in threading.enumerate() if t.name.endswith("(_connection_worker_thread)")]


@pytest.fixture
async def sqlite_threads_finished() -> AsyncIterator[None]:
    """Keep the test's event loop open until the aiosqlite connections the test opened have ended.

    Cancelling a task that awaits aiosqlite (the app's shutdown cancels its worker, which may be opening a
    connection or running a query at that moment) does not stop the call on the connection's thread: when
    the call ends, the thread hands its result to the loop that made the call. Once pytest has closed that
    loop, this raises "Event loop is closed" in the thread, which pytest reports as an error of whichever
    test runs next. Requested (autouse) before any other fixture, this is torn down after the app's
    cleanup and before the loop closes; it waits, bounded, for those threads to finish their last call
    (a cancelled connect stops its connection; a connection the cancel left unreturned is stopped when it
    is garbage-collected). The PostgreSQL driver runs no threads, so there it returns at once.
    """
    before = set(_sqlite_threads())
    yield
    deadline = time.monotonic() + SQLITE_THREADS_S
    collected = False
    while [t for t in _sqlite_threads() if t not in before] and time.monotonic() < deadline:
        if not collected:
            gc.collect()  # an abandoned connection is stopped by its finaliser
            collected = True
        await asyncio.sleep(0.01)
