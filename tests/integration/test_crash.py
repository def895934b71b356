"""A crash at any point of a stitch leaves a state from which re-running finishes the job (DESIGN invariant 5).

The subprocess tests SIGKILL a real ``stitcher serve`` while its stitch is held (``STITCH_PAUSE_MS``) between
the Redis claim and the SQL insert, then restart it: the worker's sweeper, or the client's retry of the same
subscribe, completes the stitch with every event exactly once and no second contact.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any, TypeVar

import aiohttp
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from stitcher.api import CONTACTS
from stitcher.app import init_app
from tests.conftest import API_KEY, auth, reserved_port
from tests.helpers import eventually, now_ms, recent_page_views, sql_scalar
from tracker.keys import VisitorKeys
from tracker.settings import Settings

pytestmark = pytest.mark.slow
T = TypeVar("T")
STITCHER = Path(sys.executable).with_name("stitcher")
START_TIMEOUT_S = 30.0
EXT = "C-crash-1"
EMAIL = "crash@example.com"
SERVICE_SETTINGS = {
    "REDIS_URL", "DATABASE_URL", "API_KEYS", "HOST", "PORT", "ANON_TTL_DAYS", "ALLOWED_ORIGINS", "PLACEHOLDERS",
    "VAR_DIR", "DEFAULT_PHONE_REGION", "HISTORY_CAP", "MAX_BODY_BYTES", "MAX_EVENTS", "STITCH_PAUSE_MS",
    "WORKER_ENABLED", "LOG_JSON", "IMPORT_CHUNK_ROWS",
}


# --- helpers ------------------------------------------------------------------------------------------


def subscribe_body(vid: str) -> dict[str, Any]:
    return {"contact": {"externalCustomerId": EXT, "channels": [{"type": "email", "value": EMAIL}],
                        "visitorIds": [vid]}, "groups": ["newsletter"]}


def _log_file(path: Path) -> IO[bytes]:
    return path.open("ab")


class Service:
    """A real ``stitcher serve`` process in its own process group, reached over HTTP on 127.0.0.1.

    Its port is held (``reserved_port``) until the process is gone; it binds it with ``--reuse-port``.
    """

    def __init__(self, env: dict[str, str], log_path: Path, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the process and return once ``/healthz`` answers (bounded)."""
        log = _log_file(self.log_path)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                str(STITCHER), "serve", "--port", str(self.port), "--reuse-port", env=self.env,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    break
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{self.url}/healthz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.1)
        await self.kill()
        raise AssertionError(f"stitcher serve did not become healthy:\n{self.log_path.read_text()[-3000:]}")

    async def kill(self) -> None:
        """SIGKILL the whole process group (no shutdown handlers run) and reap it."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        await asyncio.wait_for(self.proc.wait(), 10)


@contextlib.asynccontextmanager
async def service(env: dict[str, str], log_path: Path) -> AsyncIterator[Service]:
    with reserved_port() as port:
        server = Service(env, log_path, port)
        try:
            await server.start()
            yield server
        finally:
            await server.kill()


def service_env(redis_url: str, database_url: str, var_dir: Path, **extra: str) -> dict[str, str]:
    """The service's environment: this test's Redis and database, no setting inherited from the caller's."""
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_SETTINGS and not k.startswith("TEST_")}
    env.update(REDIS_URL=redis_url, DATABASE_URL=database_url, API_KEYS=API_KEY, LOG_JSON="1",
               VAR_DIR=str(var_dir), HOST="127.0.0.1", **extra)
    return env


async def send_beacons(http: aiohttp.ClientSession, url: str, vid: str, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 10):
        async with http.post(f"{url}/t", json={"vid": vid, "sent_at": now_ms(),
                                               "events": events[start:start + 10]}) as r:
            assert r.status == 204, await r.text()


async def timeline_ids(http: aiohttp.ClientSession, url: str, contact_id: int) -> list[str]:
    """Every event id on the contact's timeline, following the ``next`` cursor (bounded)."""
    ids: list[str] = []
    after = None
    for _ in range(100):
        params = {"limit": "1000", **({"after": after} if after else {})}
        async with http.get(f"{url}/api/v1/contact/{contact_id}/events", headers=auth(), params=params) as r:
            body = await r.json()
            assert r.status == 200, body
        ids += [e["id"] for e in body["events"]]
        after = body["next"]
        if after is None:
            return ids
    raise AssertionError("timeline pagination did not end")


async def crash_mid_stitch(http: aiohttp.ClientSession, redis_client: Redis, redis_url: str, database_url: str,
                           tmp_path: Path, vid: str, events: list[dict[str, Any]]) -> int:
    """Record ``events`` for ``vid``, subscribe it, SIGKILL the service while the stitch is held between the
    Redis claim and the SQL insert, and prove that is where it died. Returns the contact id SQL holds."""
    keys = VisitorKeys(vid, Settings.partitions)
    env = service_env(redis_url, database_url, tmp_path, STITCH_PAUSE_MS="3000")
    async with service(env, tmp_path / "serve-1.log") as server:
        await send_beacons(http, server.url, vid, events)
        pending = asyncio.create_task(_post(http, f"{server.url}/api/v1/contact/subscribe", subscribe_body(vid)))
        try:
            # the contact id is not known before the subscribe answers: any claim of the visitor will do
            claimed = await eventually(lambda: redis_client.keys(keys.claim_pattern), bool, 10)
            assert claimed, "the stitch never claimed the visitor's history"
            await server.kill()
        finally:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                answered = await asyncio.wait_for(pending, 10)
                raise AssertionError(f"subscribe answered before the crash: {answered}")

    # the crash really happened mid-stitch: history claimed in Redis for the contact, nothing of it in SQL
    cid = int(await sql_scalar(database_url, "SELECT id FROM contacts WHERE external_customer_id = :e", e=EXT))
    assert await redis_client.keys(keys.claim_pattern) == [keys.claim(cid).encode()]
    assert await redis_client.llen(keys.claim(cid)) == len(events)
    ids = [e["id"] for e in events]
    assert await sql_scalar(database_url, "SELECT count(*) FROM timeline WHERE event_id IN :ids", ids=ids) == 0
    assert await sql_scalar(database_url, "SELECT count(*) FROM contacts") == 1
    assert await sql_scalar(database_url, "SELECT count(*) FROM visitor_links WHERE visitor_id = :v "
                                          "AND stitched_at IS NULL", v=vid) == 1
    return cid


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(url, json=body, headers=auth(), timeout=aiohttp.ClientTimeout(total=30)) as r:
        return r.status, await r.json()


async def assert_one_contact(http: aiohttp.ClientSession, url: str, database_url: str, contact_id: int) -> None:
    async with http.get(f"{url}/api/v1/contacts", headers=auth(), params={"externalCustomerId": EXT}) as r:
        found = await r.json()
        assert r.status == 200 and r.headers["TotalCount"] == "1", found
    assert [c["id"] for c in found] == [contact_id]
    assert await sql_scalar(database_url, "SELECT count(*) FROM contacts") == 1


# --- a real process killed mid-stitch -----------------------------------------------------------------


async def test_sweeper_finishes_a_stitch_interrupted_by_a_crash(redis_client, clean_redis, database_url, tmp_path):
    """After a SIGKILL between claim and insert, the restarted worker puts all 50 events on the timeline once."""
    vid = str(uuid.uuid4())
    events = recent_page_views(50, "before")
    claims = VisitorKeys(vid, Settings.partitions).claim_pattern
    async with aiohttp.ClientSession() as http:
        cid = await crash_mid_stitch(http, redis_client, clean_redis, database_url, tmp_path, vid, events)

        async with service(service_env(clean_redis, database_url, tmp_path), tmp_path / "serve-2.log") as server:
            ids = await eventually(lambda: timeline_ids(http, server.url, cid), lambda got: len(got) >= 50, 10)
            assert Counter(ids) == Counter(e["id"] for e in events)
            assert not await eventually(lambda: redis_client.keys(claims), lambda left: not left, 5)
            await assert_one_contact(http, server.url, database_url, cid)

            # the link survived the crash: later beacons of the visitor still reach the contact
            later = recent_page_views(5, "after")
            await send_beacons(http, server.url, vid, later)
            ids = await eventually(lambda: timeline_ids(http, server.url, cid), lambda got: len(got) >= 55, 10)
            assert Counter(ids) == Counter(e["id"] for e in events + later)
        assert await sql_scalar(database_url, "SELECT count(*) FROM visitor_links WHERE visitor_id = :v "
                                              "AND stitched_at IS NULL", v=vid) == 0


async def test_retried_subscribe_finishes_a_stitch_interrupted_by_a_crash(redis_client, clean_redis, database_url,
                                                                         tmp_path):
    """After a SIGKILL between claim and insert, the client's retry of the same subscribe completes the stitch."""
    vid = str(uuid.uuid4())
    events = recent_page_views(50, "before")
    keys = VisitorKeys(vid, Settings.partitions)
    async with aiohttp.ClientSession() as http:
        cid = await crash_mid_stitch(http, redis_client, clean_redis, database_url, tmp_path, vid, events)

        env = service_env(clean_redis, database_url, tmp_path, WORKER_ENABLED="0")  # only the retry can do it
        async with service(env, tmp_path / "serve-2.log") as server:
            await asyncio.sleep(0.5)
            assert await redis_client.keys(keys.claim_pattern) == [keys.claim(cid).encode()], \
                "nothing but the retry may finish the stitch"
            status, body = await _post(http, f"{server.url}/api/v1/contact/subscribe", subscribe_body(vid))
            assert status == 200, body
            assert body["id"] == cid
            # SPEC §3: when subscribe answers the history is on the timeline — no waiting
            assert Counter(await timeline_ids(http, server.url, cid)) == Counter(e["id"] for e in events)
            assert not await redis_client.keys(keys.claim_pattern)
            await assert_one_contact(http, server.url, database_url, cid)


# --- a crash after the insert, before the claim is released (in-process) ------------------------------


async def _stitched_visitor(client: Any, redis_client: Redis, n: int) -> tuple[str, int, list[str], list[bytes]]:
    """A visitor with ``n`` page views subscribed (so stitched); returns its raw stored events too."""
    vid = str(uuid.uuid4())
    events = recent_page_views(n, "idem")
    client.session.cookie_jar.clear()
    r = await client.post("/t", json={"vid": vid, "sent_at": now_ms(), "events": events})
    assert r.status == 204
    raw = await redis_client.lrange(VisitorKeys(vid, Settings.partitions).events, 0, -1)
    assert len(raw) == n
    r = await client.post("/api/v1/contact/subscribe", headers=auth(), json=subscribe_body(vid))
    body = await r.json()
    assert r.status == 200 and body["stitchedEvents"] == n, body
    return vid, body["id"], [e["id"] for e in events], raw


async def _timeline_ids(client: Any, contact_id: int) -> list[str]:
    r = await client.get(f"/api/v1/contact/{contact_id}/events", headers=auth(), params={"limit": "1000"})
    body = await r.json()
    assert r.status == 200 and body["next"] is None, body
    return [e["id"] for e in body["events"]]


async def test_rerunning_a_stitch_whose_claim_was_not_released_duplicates_nothing(client, redis_client):
    """A stitch re-run twice over a claim already inserted (crash before release) leaves each event once."""
    vid, cid, ids, raw = await _stitched_visitor(client, redis_client, 20)
    keys = VisitorKeys(vid, Settings.partitions)
    await redis_client.rpush(keys.claim(cid), *raw)  # the claim a crash after the SQL insert would have left
    stitcher = client.app[CONTACTS].stitcher

    assert await stitcher.stitch(vid, cid) == 20
    assert await stitcher.stitch(vid, cid) == 0

    assert Counter(await _timeline_ids(client, cid)) == Counter(ids)
    assert not await redis_client.keys(keys.claim_pattern)
    assert int(await redis_client.get(keys.link)) == cid


@pytest.fixture
async def client_without_worker(aiohttp_client, settings):  # type: ignore[no-untyped-def]
    """The whole service with its worker off, for a test that runs the sweeper itself: a worker's first sweep
    finishes every unfinished stitch, and if it came late (a loaded machine) it could take the test's own."""
    return await aiohttp_client(init_app(dataclasses.replace(settings, worker_enabled=False)))


async def test_sweeper_reruns_a_stitch_that_crashed_after_its_insert(client_without_worker, redis_client,
                                                                     database_url):
    """The sweeper finishes a stitch left unmarked with its claim in Redis, without doubling the timeline."""
    client = client_without_worker
    vid, cid, ids, raw = await _stitched_visitor(client, redis_client, 20)
    keys = VisitorKeys(vid, Settings.partitions)
    await redis_client.rpush(keys.claim(cid), *raw)
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:  # the state a crash after the insert, before release, leaves
            await conn.execute(text("UPDATE visitor_links SET stitched_at = NULL WHERE visitor_id = :v"), {"v": vid})
    finally:
        await engine.dispose()

    assert await client.app[CONTACTS].stitcher.finish_pending() == 1

    assert Counter(await _timeline_ids(client, cid)) == Counter(ids)
    assert not await redis_client.keys(keys.claim_pattern)
    assert await sql_scalar(database_url, "SELECT count(*) FROM visitor_links WHERE visitor_id = :v "
                                          "AND stitched_at IS NULL", v=vid) == 0
