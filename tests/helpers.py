"""Helpers shared by the integration tests: beacons and API calls through the test client, direct SQL reads."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from stitcher.console.throughput import KEY as THROUGHPUT_KEY
from tests.conftest import TABLES, auth
from tracker import keys
from tracker.keys import PREFIX

T = TypeVar("T")
BASE_MS = 1_800_000_000_000
SENT_AT_MS = BASE_MS + 1_000_000  # one send time for every batch keeps derived times in ts order


def page_views(n: int, start: int = 0, prefix: str = "pv") -> list[dict[str, Any]]:
    """``n`` page views with distinct ids, ``ts`` one millisecond apart (numbered from ``start``)."""
    return [{"id": f"{prefix}-{uuid.uuid4()}", "type": "page_view", "ts": BASE_MS + start + i,
             "url": f"https://shop.example/p/{start + i}", "title": f"page {start + i}"} for i in range(n)]


def now_ms() -> int:
    return int(time.time() * 1000)


def recent_page_views(n: int, label: str) -> list[dict[str, Any]]:
    """``n`` page views with fresh unique ids, stamped a second ago by the client clock."""
    ts = now_ms() - 1000
    return [{"id": str(uuid.uuid4()), "type": "page_view", "ts": ts + i, "url": f"https://shop.example/{label}/{i}"}
            for i in range(n)]


async def beacon(client: Any, vid: str, events: list[dict[str, Any]]) -> None:
    """Send one beacon as visitor ``vid`` the way t.js does (text/plain); the cookie jar must not interfere."""
    client.session.cookie_jar.clear()
    r = await client.post("/t", data=orjson.dumps({"vid": vid, "sent_at": SENT_AT_MS, "events": events}),
                          headers={"Content-Type": "text/plain"})
    assert r.status == 204, await r.text()
    assert r.headers["X-Stitcher-Visitor"] == vid
    client.session.cookie_jar.clear()


async def call(client: Any, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
    """One authenticated JSON call: (status, decoded body)."""
    r = await client.request(method, path, json=body, headers=auth(), **kw)
    return r.status, await r.json()


async def search_total(client: Any, **params: str) -> int:
    """TotalCount of a contact search."""
    r = await client.get("/api/v1/contacts", params=params, headers=auth())
    assert r.status == 200, await r.text()
    return int(r.headers["TotalCount"])


async def eventually(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], seconds: float) -> T:
    """Poll ``probe`` until ``done`` holds of its value or ``seconds`` pass; returns the last value."""
    deadline = time.monotonic() + seconds
    for _ in range(100_000):
        value = await probe()
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("unreachable")


async def sql_scalar(database_url: str, query: str, **params: Any) -> Any:
    """One value from the service's database, read directly (not through the API)."""
    statement = text(query)
    for name, value in params.items():
        if isinstance(value, list | tuple):
            statement = statement.bindparams(bindparam(name, expanding=True))
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(statement, params)).scalar_one()
    finally:
        await engine.dispose()


async def sql_write(database_url: str, statement: str) -> None:
    """Run one statement on the service's database directly, committed."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def identity_lock_waiters(db: Any, database_url: str, expected: int) -> None:
    """Wait (bounded) until ``expected`` transactions queue on identity locks: on PostgreSQL, advisory locks of
    this database not yet granted; on SQLite, calls waiting for the service's in-process write lock (an
    asyncio.Lock, granted first come, first served; read through private attributes, as nothing else shows
    it). A fixed sleep instead would let a slow first call queue after the second one on a loaded machine."""
    if not database_url.startswith("postgresql"):
        lock = db._write_lock
        assert lock is not None

        async def queued() -> int:
            return len(lock._waiters or ())  # type: ignore[attr-defined]

        waiting = await eventually(queued, lambda n: n >= expected, 10)
        assert waiting == expected
        return
    query = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
             "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
    waiting = await eventually(lambda: sql_scalar(database_url, query), lambda n: n >= expected, 10)
    assert waiting == expected


async def add_contact(client: Any, body: Mapping[str, Any] | None = None, **fields: Any) -> int:
    """POST /api/v1/contact with ``body`` and/or ``fields``; the id of the contact it answers with."""
    status, answer = await call(client, "POST", "/api/v1/contact", {**(body or {}), **fields})
    assert status == 200, answer
    return int(answer["id"])


async def get_contact(client: Any, contact_id: int) -> dict[str, Any]:
    """GET /api/v1/contact/{id}, which must answer 200."""
    status, body = await call(client, "GET", f"/api/v1/contact/{contact_id}")
    assert status == 200, body
    return dict(body)


async def identity_log(client: Any, contact_id: int) -> list[dict[str, Any]]:
    """The entries of a contact's identity log, oldest first."""
    status, body = await call(client, "GET", f"/api/v1/contact/{contact_id}/identity-log")
    assert status == 200, body
    return list(body["entries"])


async def _timeline_page(client: Any, contact_id: int) -> dict[str, Any]:
    status, page = await call(client, "GET", f"/api/v1/contact/{contact_id}/events", params={"limit": "1000"})
    assert status == 200, page
    return dict(page)


async def timeline_events(client: Any, contact_id: int) -> list[dict[str, Any]]:
    """The first page (up to 1000) of a contact's timeline."""
    return list((await _timeline_page(client, contact_id))["events"])


async def timeline_ids(client: Any, contact_id: int) -> list[str]:
    """The event ids on a contact's timeline (one page of up to 1000, which must be the whole of it)."""
    page = await _timeline_page(client, contact_id)
    assert page["next"] is None
    return [e["id"] for e in page["events"]]


# the console's minutes, the limiter's buckets, the sweeper's lease, the Redis run whose links were re-seeded
_NOT_DATA = (THROUGHPUT_KEY, keys.bucket("", "")[:-1], keys.lease(""), keys.LINKS_SEEDED)


class Stored:
    """What the service holds, counted from outside: rows of every table and the tracker's Redis data."""

    def __init__(self, engine: AsyncEngine, redis: Redis) -> None:
        self._engine, self._redis = engine, redis
        self._rows = text("SELECT " + " + ".join(f"(SELECT count(*) FROM {t})" for t in TABLES))

    async def count(self) -> tuple[int, int, list[str]]:
        """(rows of every table, the summed length of every Redis key, which keys hold what). An empty key
        counts for nothing (the worker makes the partitions' empty streams as it starts), nor do the console's
        per-minute counts (a sampler adds to them every few seconds, whatever the requests), the rate limiter's
        buckets (a refused request takes a token too) or the sweeper's lease."""
        async with self._engine.connect() as conn:
            rows = int((await conn.execute(self._rows)).scalar_one())
        keys = [k async for k in self._redis.scan_iter(f"{PREFIX}:*", count=1000)
                if not k.decode().startswith(_NOT_DATA)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.type(key)
            types = await pipe.execute()
            for key, kind in zip(keys, types, strict=True):
                {b"list": pipe.llen, b"stream": pipe.xlen, b"set": pipe.scard, b"hash": pipe.hlen,
                 b"zset": pipe.zcard}.get(kind, pipe.strlen)(key)
            sizes = await pipe.execute()
        held = sorted(f"{k.decode()}={n}" for k, n in zip(keys, sizes, strict=True) if n)
        return rows, sum(sizes), held


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Stop a service the test started: SIGTERM (so it stops its own children, e.g. the import parser), then
    SIGKILL if it has not ended within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def sms_webhook(got: list[dict[str, Any]]) -> web.Application:
    """An SMS webhook at ``/sms`` that keeps each posted JSON body in ``got`` and answers 202."""

    async def receive(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/sms", receive)
    return app
