"""Shared fixtures: real Redis and real SQL.

By default each test session starts its own redis-server and uses SQLite files; CI sets
``TEST_REDIS_URL`` / ``TEST_DATABASE_URL`` to run the same tests against the machine's Redis and PostgreSQL.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis

from tracker.embedded_redis import EmbeddedRedis
from tracker.settings import Settings

API_KEY = "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis for the session: the one named by TEST_REDIS_URL, else a private redis-server."""
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        yield url
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=free_port())
    yield server.start()
    server.stop()


@pytest.fixture
def clean_redis(redis_url: str) -> str:
    """The session's Redis, emptied for this test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    return redis_url


@pytest.fixture
async def redis_client(clean_redis: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(clean_redis)
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


TABLES = ("timeline", "visitor_links", "group_members", "identifiers", "identity_log", "groups", "contacts")


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
        import shutil

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
    """Settings of the whole service on real Redis and real SQL, the worker running."""
    return Settings(redis_url=clean_redis, database_url=database_url, api_keys=(API_KEY,), var_dir=tmp_path,
                    static_dir=Path(os.environ.get("TMP_STATIC", Settings.static_dir)))


@pytest.fixture
async def client(aiohttp_client, settings: Settings):  # type: ignore[no-untyped-def]
    """A test client of the whole service (tracker + contacts API + worker)."""
    from stitcher.app import init_app

    return await aiohttp_client(init_app(settings))
