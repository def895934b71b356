"""Redis failing under a real ``stitcher serve``: stopped and restarted under beacon load, and restarted empty
(no persistence) while visitors are linked.

Each test runs the service as a subprocess against a redis-server of its own on a unix socket (the address
stays the test's while the server is down) and this run's SQL (SQLite, or PostgreSQL with TEST_DATABASE_URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from tests.conftest import auth, private_redis
from tests.helpers import eventually, now_ms, recent_page_views
from tests.integration.test_crash import send_beacons, service, service_env, timeline_ids
from tracker.embedded_redis import EmbeddedRedis
from tracker.keys import VisitorKeys
from tracker.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # each takes 10-40 s; generous on a loaded machine
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)


class PersistentRedis(EmbeddedRedis):
    """A redis-server with an append-only file: a stop (SIGTERM, which flushes it) and a start keep its data."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, persistent=True)


@pytest.fixture
def volatile_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server without persistence: restarted, it is empty."""
    with private_redis(EmbeddedRedis) as server:
        server.start()
        yield server


@pytest.fixture
def durable_redis() -> Iterator[PersistentRedis]:
    with private_redis(PersistentRedis) as server:
        server.start()
        yield server


async def subscribe(http: aiohttp.ClientSession, url: str, ext: str, vid: str) -> dict[str, Any]:
    body = {"contact": {"externalCustomerId": ext, "channels": [{"type": "email", "value": f"{ext}@example.com"}],
                        "visitorIds": [vid]}}
    async with http.post(f"{url}/api/v1/contact/subscribe", json=body, headers=auth()) as r:
        answer = await r.json()
        assert r.status == 200, answer
        return dict(answer)


# --- a Redis that lost its data while visitors are linked ----------------------------------------------


async def test_links_lost_with_redis_data_are_reseeded_from_sql(volatile_redis, database_url, tmp_path):
    """Redis restarted empty while 5 visitors are linked: their later beacons still reach their contacts
    (the sweeper re-creates the links from SQL and moves what arrived anonymously meanwhile), each event once,
    and a visitor never linked stays anonymous."""
    env = service_env(volatile_redis.url, database_url, tmp_path)
    vids = [str(uuid.uuid4()) for _ in range(5)]
    stranger = str(uuid.uuid4())
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as http, \
            service(env, tmp_path / "serve.log") as server:
        before = {vid: recent_page_views(3, "before") for vid in vids}
        contacts = {}
        for i, vid in enumerate(vids):
            await send_beacons(http, server.url, vid, before[vid])
            answer = await subscribe(http, server.url, f"C-lost-{i}", vid)
            assert answer["stitchedEvents"] == 3
            contacts[vid] = answer["id"]

        volatile_redis.stop()
        volatile_redis.start()  # the same address, and nothing in it: no link, no stream, no consumer group
        direct = Redis.from_url(volatile_redis.url)
        try:
            assert await direct.dbsize() == 0
            after = {vid: recent_page_views(4, "after") for vid in [*vids, stranger]}
            for vid, events in after.items():  # sent at once: they land anonymous until the sweeper re-seeds
                await send_with_retries(http, server.url, vid, events)

            for vid in vids:
                want = Counter(e["id"] for e in before[vid] + after[vid])
                ids = await eventually(lambda vid=vid: timeline_ids(http, server.url, contacts[vid]),
                                       lambda got, want=want: Counter(got) == want, 60)
                assert Counter(ids) == want, vid
                assert int(await direct.get(VisitorKeys(vid, Settings.partitions).link)) == contacts[vid]

            # once re-linked, a beacon goes straight to the contact through the recreated stream and group
            later = {vid: recent_page_views(2, "later") for vid in vids}
            for vid, events in later.items():
                await send_with_retries(http, server.url, vid, events)
            for vid in vids:
                want = Counter(e["id"] for e in before[vid] + after[vid] + later[vid])
                ids = await eventually(lambda vid=vid: timeline_ids(http, server.url, contacts[vid]),
                                       lambda got, want=want: Counter(got) == want, 30)
                assert Counter(ids) == want, vid

            async with http.get(f"{server.url}/api/v1/visitor/{stranger}/events", headers=auth()) as r:
                history = await r.json()
                assert r.status == 200, history
            assert history["linkedContactId"] is None
            assert [e["id"] for e in history["events"]] == [e["id"] for e in after[stranger]]
        finally:
            await direct.aclose()


async def send_with_retries(http: aiohttp.ClientSession, url: str, vid: str, events: list[dict[str, Any]],
                            attempts: int = 40) -> list[int]:
    """Post one batch as the script does: the same events again after a 503 or a connection error, with a
    short backoff. Returns every status seen (0 for a connection error); the last must be 204."""
    seen: list[int] = []
    body = orjson.dumps({"vid": vid, "sent_at": now_ms(), "events": events})
    for attempt in range(attempts):
        try:
            async with http.post(f"{url}/t", data=body, headers={"Content-Type": "text/plain"}) as r:
                seen.append(r.status)
                if r.status == 503:
                    assert r.content_type == "application/json", await r.text()
                    assert "Retry-After" in r.headers
                elif r.status == 204:
                    return seen
                else:
                    raise AssertionError(f"beacon answered {r.status}: {await r.text()}")
        except (aiohttp.ClientConnectionError, TimeoutError):
            seen.append(0)
        await asyncio.sleep(min(0.05 * 2**attempt, 1.0) * (0.5 + random.random()))
    raise AssertionError(f"beacon never stored: {seen}")


# --- Redis stopped and restarted under beacon load ------------------------------------------------------


async def test_redis_stopped_under_beacon_load_is_503_and_recovers_by_itself(durable_redis, database_url,
                                                                             tmp_path):
    """16 clients send beacons without pause while Redis stops for ~2 s and comes back: the answers are 204
    or a JSON 503 (never a 500), 503s are seen while it is down, the same service stores beacons again
    afterwards, every event is stored exactly once, and a linked visitor's events reach its contact once."""
    env = service_env(durable_redis.url, database_url, tmp_path)
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as http, \
            service(env, tmp_path / "serve.log") as server:
        linked = str(uuid.uuid4())
        contact = (await subscribe(http, server.url, "C-load", linked))["id"]
        vids = [linked, *(str(uuid.uuid4()) for _ in range(15))]
        sent: dict[str, list[str]] = {vid: [] for vid in vids}
        statuses: Counter[int] = Counter()
        down = asyncio.Event()
        stop = asyncio.Event()

        async def client(vid: str) -> None:
            while not stop.is_set():
                events = recent_page_views(3, "load")
                seen = await send_with_retries(http, server.url, vid, events)
                statuses.update(seen)
                sent[vid] += [e["id"] for e in events]

        clients = [asyncio.create_task(client(vid)) for vid in vids]
        try:
            await eventually(lambda: _total(statuses), lambda n: n >= 50, 30)
            down.set()
            before_outage = statuses[503]
            await asyncio.to_thread(durable_redis.stop)
            with contextlib.suppress(AssertionError):
                await eventually(lambda: _count(statuses, 503), lambda n: n >= before_outage + 16, 10)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(durable_redis.start)
            stored_after = statuses[204]
            await eventually(lambda: _count(statuses, 204), lambda n: n >= stored_after + 50, 30)
        finally:
            stop.set()
            results = await asyncio.gather(*clients, return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)], results
        assert set(statuses) <= {204, 503, 0}, statuses
        assert statuses[503] > 0, statuses  # the outage was seen, as 503s
        assert statuses[500] == 0

        direct = Redis.from_url(durable_redis.url)
        try:
            for vid in vids[1:]:
                raw = await direct.lrange(VisitorKeys(vid, Settings.partitions).events, 0, -1)
                assert Counter(orjson.loads(x)["id"] for x in raw) == Counter(sent[vid]), vid
        finally:
            await direct.aclose()
        want = Counter(sent[linked])
        ids = await eventually(lambda: timeline_ids(http, server.url, contact), lambda got: Counter(got) == want, 60)
        assert Counter(ids) == want
        async with http.get(f"{server.url}/readyz") as r:
            assert r.status == 200


async def _total(statuses: Counter[int]) -> int:
    return sum(statuses.values())


async def _count(statuses: Counter[int], status: int) -> int:
    return statuses[status]
