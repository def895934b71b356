"""Redis down or slow (SPEC §2): the tracker answers 503 quickly, never hangs or 500s, and recovers by itself."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse, DummyCookieJar, web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from tests.conftest import API_KEY, private_redis
from tests.edge_server import EdgeTestServer
from tracker.app import init_app
from tracker.embedded_redis import EmbeddedRedis
from tracker.keys import VisitorKeys
from tracker.settings import Settings

pytestmark = pytest.mark.slow

Client = TestClient[web.Request, web.Application]
HANG_BOUND = 3.0  # seconds: a bound against a hang, not a performance assertion
SHOP = "https://shop.example"


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own, on a unix socket so it can be stopped and started again at the same
    address (no other process can take that address while it is down, as one could take a TCP port)."""
    with private_redis(EmbeddedRedis) as server:
        server.start()
        yield server


@pytest.fixture
def settings(own_redis: EmbeddedRedis, tmp_path: Path) -> Settings:
    return Settings(redis_url=own_redis.url, api_keys=(API_KEY,), var_dir=tmp_path, worker_enabled=False,
                    allowed_origins=(SHOP,),
                    static_dir=Path(os.environ.get("TMP_STATIC", Settings.static_dir)))


@pytest.fixture(params=["edge", "aiohttp"])
async def client(aiohttp_client: Any, settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    """Through the edge (as ``stitcher serve`` listens) and through the aiohttp application alone."""
    app = init_app(settings)
    yield await aiohttp_client(EdgeTestServer(app) if request.param == "edge" else app, cookie_jar=DummyCookieJar())


@pytest.fixture
async def direct(own_redis: EmbeddedRedis) -> AsyncIterator[Redis]:
    """A client of the test's own to inspect that Redis."""
    r = Redis.from_url(own_redis.url, socket_timeout=5)
    yield r
    await r.aclose()


def beacon(vid: str, event_id: str) -> bytes:
    now = int(time.time() * 1000)
    return orjson.dumps({"vid": vid, "sent_at": now,
                         "events": [{"id": event_id, "type": "page_view", "ts": now - 10}]})


async def post(client: Client, raw: bytes, **headers: str) -> tuple[ClientResponse, float]:
    started = time.monotonic()
    r = await client.post("/t", data=raw, headers={"Content-Type": "text/plain", **headers})
    await r.read()
    return r, time.monotonic() - started


async def post_with_retries(client: Client, raw: bytes, attempts: int = 5) -> list[int]:
    """Post like the script does: retry a 503 after a short backoff. Returns every status seen."""
    statuses: list[int] = []
    for attempt in range(attempts):
        r, _ = await post(client, raw)
        statuses.append(r.status)
        if r.status != 503:
            break
        await asyncio.sleep(0.1 * 2**attempt)
    return statuses


async def assert_quick_503(client: Client, vid: str, event_id: str) -> ClientResponse:
    r, elapsed = await post(client, beacon(vid, event_id), Origin=SHOP)
    assert r.status == 503, await r.text()
    assert elapsed < HANG_BOUND
    assert r.content_type == "application/json"
    assert (await r.json())["error"] == "unavailable"
    assert int(r.headers["Retry-After"]) >= 1
    return r


async def stored_ids(direct: Redis, settings: Settings, vid: str) -> list[str]:
    await direct.connection_pool.disconnect()  # the test's own connections may predate a restart
    raw = await direct.lrange(VisitorKeys(vid, settings.partitions).events, 0, -1)
    return [orjson.loads(x)["id"] for x in raw]


async def test_redis_down_is_a_quick_503_and_recovery_needs_no_restart(
        client: Client, own_redis: EmbeddedRedis, settings: Settings, direct: Redis) -> None:
    """With Redis stopped a beacon gets 503 + Retry-After at once; once Redis is back, beacons are stored again."""
    vid = str(uuid.uuid4())
    r, _ = await post(client, beacon(vid, "before"))
    assert r.status == 204
    assert await stored_ids(direct, settings, vid) == ["before"]

    own_redis.stop()
    for i in range(3):  # every attempt fails fast, not just the first
        await assert_quick_503(client, vid, f"during-{i}")
    started = time.monotonic()
    r = await client.get("/readyz")
    assert r.status == 503
    assert time.monotonic() - started < HANG_BOUND
    data = await r.json()
    assert data["status"] == "unavailable"
    assert data["checks"]["redis"] is False
    assert (await client.get("/healthz")).status == 200  # the process itself is alive

    own_redis.start()  # same address, empty, no Lua scripts loaded (NOSCRIPT must be handled)
    statuses = await post_with_retries(client, beacon(vid, "after"))
    assert statuses[-1] == 204, statuses
    assert set(statuses) <= {204, 503}
    assert await stored_ids(direct, settings, vid) == ["after"]
    assert (await client.get("/readyz")).status == 200
    text = await (await client.get("/metrics")).text()
    assert 'route="/t",status="503"' in text


async def test_redis_slow_is_a_quick_503(client: Client, own_redis: EmbeddedRedis, settings: Settings,
                                         direct: Redis) -> None:
    """When Redis stops answering (CLIENT PAUSE), a beacon gets 503 within the timeout instead of hanging."""
    vid = str(uuid.uuid4())
    r, _ = await post(client, beacon(vid, "before"))
    assert r.status == 204
    pause_ms = 4_500  # longer than the hang bound: a hung request would come back late, as a 204
    paused_at = time.monotonic()
    await direct.execute_command("CLIENT", "PAUSE", pause_ms, "ALL")  # type: ignore[no-untyped-call]
    await assert_quick_503(client, vid, "during")
    started = time.monotonic()
    assert (await client.get("/readyz")).status == 503
    assert time.monotonic() - started < HANG_BOUND
    await asyncio.sleep(max(0.0, pause_ms / 1000 - (time.monotonic() - paused_at)) + 0.2)
    statuses = await post_with_retries(client, beacon(vid, "after"))
    assert statuses[-1] == 204, statuses
    assert "after" in await stored_ids(direct, settings, vid)


async def test_a_flood_during_an_outage_fails_fast_and_leaves_the_writer_working(
        client: Client, own_redis: EmbeddedRedis, settings: Settings, direct: Redis) -> None:
    """Many concurrent beacons during an outage all get 503 promptly, and the shared writer survives it."""
    vid = str(uuid.uuid4())
    own_redis.stop()
    started = time.monotonic()
    results = await asyncio.gather(*(post(client, beacon(vid, f"flood-{i}")) for i in range(50)))
    assert {r.status for r, _ in results} == {503}
    assert time.monotonic() - started < 2 * HANG_BOUND
    own_redis.start()
    # every one of them is stored once the script's retries come in (a loaded machine may 503 a few)
    results = await asyncio.gather(*(post_with_retries(client, beacon(vid, f"ok-{i}")) for i in range(50)))
    assert {statuses[-1] for statuses in results} == {204}, results
    assert sorted(await stored_ids(direct, settings, vid)) == sorted(f"ok-{i}" for i in range(50))


async def test_503_is_readable_by_the_page(client: Client, own_redis: EmbeddedRedis) -> None:
    """The 503 carries CORS headers, so the script can read the status and keep the batch for a retry."""
    own_redis.stop()
    r = await assert_quick_503(client, str(uuid.uuid4()), "e1")
    assert r.headers.get("Access-Control-Allow-Origin") == SHOP


async def test_redis_down_at_startup_is_503_not_a_crash(aiohttp_client: Any, settings: Settings,
                                                        own_redis: EmbeddedRedis) -> None:
    """A tracker started while Redis is down answers beacons with 503 and serves them once Redis is up."""
    own_redis.stop()
    client = await aiohttp_client(init_app(dataclasses.replace(settings)), cookie_jar=DummyCookieJar())
    await assert_quick_503(client, str(uuid.uuid4()), "e1")
    own_redis.start()
    assert (await post_with_retries(client, beacon(str(uuid.uuid4()), "e2")))[-1] == 204
