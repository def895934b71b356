"""Rate limits (``tracker.ratelimit``) on a real Redis: per client address on the tracking routes, through both
fronts (the edge and the aiohttp routes), and per API key on the API, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientResponse, DummyCookieJar, web
from aiohttp.test_utils import TestClient
from multidict import MultiDict
from redis.asyncio import Redis

from tests.conftest import API_KEY, auth, private_redis
from tests.edge_server import EdgeTestServer
from tests.integration.test_tracker import CHROME, beacon, ev, history, metric, post
from tracker import keys
from tracker.app import init_app
from tracker.clientip import parse_networks
from tracker.embedded_redis import EmbeddedRedis
from tracker.rates import parse_rate
from tracker.settings import Settings

Client = TestClient[web.Request, web.Application]
SHOP = "https://shop.example"


@pytest.fixture(params=["edge", "aiohttp"])
def front(request: pytest.FixtureRequest) -> str:
    """Every tracking test runs through the edge (``stitcher serve``'s listener) and the aiohttp routes."""
    return str(request.param)


@pytest.fixture
async def open_client(aiohttp_client: Any, front: str) -> Any:
    async def make(settings: Settings, **kwargs: Any) -> Client:
        kwargs.setdefault("cookie_jar", DummyCookieJar())
        kwargs.setdefault("headers", {"User-Agent": CHROME})
        app = init_app(settings)
        return await aiohttp_client(EdgeTestServer(app) if front == "edge" else app, **kwargs)  # type: ignore[no-any-return]

    return make


def limited(settings: Settings, track: str = "3/1m", proxies: str = "") -> Settings:
    """``settings`` with a tracking limit (default: 3 beacons, then one every 20 s) and trusted proxies."""
    return dataclasses.replace(settings, rate_limit_track=parse_rate(track),
                               trusted_proxies=parse_networks(p for p in proxies.split(",") if p))


async def assert_limited(r: ClientResponse, most: int = 60) -> int:
    """``r`` is the 429 a client can act on: Retry-After in whole seconds, the same in a JSON body; returns it."""
    assert r.status == 429, await r.text()
    retry_after = r.headers["Retry-After"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= most
    assert r.content_type == "application/json"
    body = await r.json()
    assert body["error"] == "rate_limited" and body["status"] == 429 and body["message"]
    assert body["retry_after"] == int(retry_after)
    return int(retry_after)


async def exhaust(client: Client, n: int = 3, **headers: str) -> None:
    """Spend a bucket of ``n`` with stored beacons."""
    for _ in range(n):
        r = await post(client, beacon(ev()), **headers)
        assert r.status == 204, await r.text()


# --- the tracking routes ------------------------------------------------------------------------------------


async def test_a_beacon_past_the_limit_is_429_with_retry_after_and_stores_nothing(
        open_client: Any, tracker_settings: Settings) -> None:
    """Past its bucket a client's beacon is answered 429 with Retry-After (integer seconds) and a JSON body the
    page can read (CORS, Retry-After exposed), and its events are not stored."""
    client = await open_client(limited(tracker_settings))
    vid = str(uuid.uuid4())
    for i in range(3):
        assert (await post(client, beacon(ev(f"ok-{i}"), vid=vid), Origin=SHOP)).status == 204
    r = await post(client, beacon(ev("refused"), vid=vid), Origin=SHOP)
    assert 15 <= await assert_limited(r) <= 20  # a token every 20 s
    assert r.headers["Access-Control-Allow-Origin"] == SHOP
    assert "Retry-After" in r.headers["Access-Control-Expose-Headers"]
    assert [e["id"] for e in await history(client, vid)] == ["ok-0", "ok-1", "ok-2"]
    text = await (await client.get("/metrics")).text()
    assert metric(text, "stitcher_http_requests_total", route="/t", method="POST", status="429") == 1


async def test_the_pixel_is_limited_too(open_client: Any, tracker_settings: Settings) -> None:
    """GET /t.gif takes from the same bucket as POST /t: past it, a JSON 429 with Retry-After."""
    import base64

    client = await open_client(limited(tracker_settings))
    await exhaust(client, 2)
    d = base64.urlsafe_b64encode(beacon(ev())).decode().rstrip("=")
    assert (await client.get("/t.gif", params={"d": d})).status == 200
    await assert_limited(await client.get("/t.gif", params={"d": d}))
    await assert_limited(await post(client, beacon(ev())))


async def test_identify_takes_from_the_beacons_bucket(open_client: Any, tracker_settings: Settings) -> None:
    """POST /t/identify (signed identify) shares the address's bucket: past it, guessed signatures get a JSON
    429 with Retry-After (and CORS, so the page can read it), not a signature check each."""
    settings = dataclasses.replace(limited(tracker_settings), identify_secrets=("identify-secret",))
    client = await open_client(settings)
    await exhaust(client, 3)
    answer = await client.post("/t/identify", data=b'{"externalCustomerId": "C-1", "signature": "00"}',
                               headers={"Origin": "https://shop.example.com"})
    await assert_limited(answer)
    assert answer.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"


async def test_a_malformed_beacon_is_refused_without_taking_a_token(open_client: Any, tracker_settings: Settings,
                                                                    redis_client: Redis) -> None:
    """A bad body is a 400 before the limiter is asked: it writes nothing to Redis, no bucket either."""
    client = await open_client(limited(tracker_settings))
    for _ in range(5):
        assert (await post(client, b"{not json")).status == 400
    assert await redis_client.keys("*") == []
    await exhaust(client, 3)


async def test_the_bucket_refills(open_client: Any, tracker_settings: Settings) -> None:
    """Once Retry-After has passed the client's beacons are accepted again, at the configured rate."""
    client = await open_client(limited(tracker_settings, "1/1s"))
    await exhaust(client, 1)
    wait = await assert_limited(await post(client, beacon(ev())), most=1)
    await asyncio.sleep(wait)
    assert (await post(client, beacon(ev()))).status == 204


async def test_clients_at_other_addresses_have_buckets_of_their_own(
        open_client: Any, tracker_settings: Settings) -> None:
    """One address past its limit leaves another address's beacons alone (two loopback addresses)."""
    settings = limited(tracker_settings)
    first = await open_client(settings)
    await exhaust(first)
    await assert_limited(await post(first, beacon(ev())))
    other = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)),
                                  cookie_jar=DummyCookieJar())
    async with other:
        url = first.make_url("/t")
        for _ in range(3):
            async with other.post(url, data=beacon(ev()), headers={"Content-Type": "text/plain"}) as r:
                assert r.status == 204, await r.text()
        async with other.post(url, data=beacon(ev()), headers={"Content-Type": "text/plain"}) as r:
            await assert_limited(r)


@pytest.mark.parametrize("proxies", ["", "10.0.0.0/8"])
async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(open_client: Any, tracker_settings: Settings,
                                                                proxies: str) -> None:
    """Without TRUSTED_PROXIES (or from a peer outside them) a client cannot pick its bucket with
    X-Forwarded-For: every beacon of the peer counts against the peer."""
    client = await open_client(limited(tracker_settings, proxies=proxies))
    await exhaust(client, 3, **{"X-Forwarded-For": "198.51.100.1"})
    await assert_limited(await post(client, beacon(ev()), **{"X-Forwarded-For": "198.51.100.2"}))
    await assert_limited(await post(client, beacon(ev())))


async def test_x_forwarded_for_from_a_trusted_proxy_names_the_client(open_client: Any,
                                                                    tracker_settings: Settings) -> None:
    """From a trusted proxy the rightmost untrusted X-Forwarded-For hop is the client: each has its own bucket,
    and what a client writes to the left of it (or in an earlier header line) changes nothing."""
    client = await open_client(limited(tracker_settings, proxies="127.0.0.1/32,10.0.0.0/8"))
    xff = "X-Forwarded-For"
    await exhaust(client, 3, **{xff: "203.0.113.7"})
    await assert_limited(await post(client, beacon(ev()), **{xff: "203.0.113.7"}))
    # the same client, behind a second (trusted) proxy, and with a forged hop of its own in front
    await assert_limited(await post(client, beacon(ev()), **{xff: "203.0.113.7, 10.1.2.3"}))
    await assert_limited(await post(client, beacon(ev()), **{xff: "198.51.100.9, 203.0.113.7"}))
    # HAProxy adds a header line of its own below the client's
    two_lines = MultiDict([("Content-Type", "text/plain"), (xff, "198.51.100.9"), (xff, "203.0.113.7")])
    await assert_limited(await client.post("/t", data=beacon(ev()), headers=two_lines))
    # another client through the same proxy is not held back
    await exhaust(client, 3, **{xff: "203.0.113.8"})
    # an IPv6 client counts by its /64
    await exhaust(client, 3, **{xff: "2001:db8:1:2::1"})
    await assert_limited(await post(client, beacon(ev()), **{xff: "2001:db8:1:2:ffff::9"}))
    await exhaust(client, 3, **{xff: "2001:db8:1:3::1"})


async def test_a_failing_limiter_lets_beacons_through(open_client: Any, tracker_settings: Settings,
                                                      redis_client: Redis) -> None:
    """When the limiter's Redis call fails (here: its key holds the wrong type) the beacon is stored and
    answered 204, never a 500; the failure is counted."""
    client = await open_client(limited(tracker_settings, "1/1h"))
    await redis_client.set(keys.bucket("t", "127.0.0.1"), "not a bucket")
    vid = str(uuid.uuid4())
    for i in range(3):
        r = await post(client, beacon(ev(f"e{i}"), vid=vid))
        assert r.status == 204, await r.text()
    assert [e["id"] for e in await history(client, vid)] == ["e0", "e1", "e2"]
    text = await (await client.get("/metrics")).text()
    assert metric(text, "stitcher_rate_limiter_errors_total") == 3


async def test_a_lost_limiter_script_is_loaded_again(open_client: Any, tracker_settings: Settings,
                                                     redis_client: Redis) -> None:
    """After Redis lost its scripts (a restart, here SCRIPT FLUSH) the limiter loads its script again and the
    limit holds from the first beacon on: no request passes for free."""
    client = await open_client(limited(tracker_settings, "2/1h"))
    await exhaust(client, 2)
    await assert_limited(await post(client, beacon(ev())), most=1800)
    await redis_client.script_flush()
    await redis_client.delete(keys.bucket("t", "127.0.0.1"))
    await exhaust(client, 2)
    await assert_limited(await post(client, beacon(ev())), most=1800)


async def test_limits_off_take_nothing_from_redis(open_client: Any, tracker_settings: Settings,
                                                  redis_client: Redis) -> None:
    """RATE_LIMIT_TRACK=0 turns the tracking limit off: many beacons, all 204, no bucket in Redis."""
    client = await open_client(dataclasses.replace(tracker_settings, rate_limit_track=None))
    await asyncio.gather(*(exhaust(client, 10) for _ in range(10)))
    assert not [k for k in await redis_client.keys("*") if k.startswith(b"st:rl:")]


async def test_redis_down_is_a_503_with_the_limiter_on(open_client: Any, tmp_path: Path) -> None:
    """With Redis stopped, a beacon under a rate limit is a 503 with Retry-After (the limiter fails open, the
    store is down), never a 500; once Redis is back beacons are stored again."""
    with private_redis(EmbeddedRedis) as server:
        url = server.start()
        settings = limited(Settings(redis_url=url, api_keys=(API_KEY,), var_dir=tmp_path, worker_enabled=False))
        client = await open_client(settings)
        assert (await post(client, beacon(ev()))).status == 204
        server.stop()
        r = await post(client, beacon(ev()))
        assert r.status == 503 and r.headers["Retry-After"] == "1", await r.text()
        assert (await r.json())["error"] == "unavailable"
        server.start()
        for _ in range(50):  # the client reconnects on its own
            r = await post(client, beacon(ev()))
            if r.status == 204:
                break
            assert r.status == 503, await r.text()
            await asyncio.sleep(0.1)
        assert r.status == 204


# --- the API ------------------------------------------------------------------------------------------------


@pytest.fixture
async def api_client(aiohttp_client: Any, settings: Settings) -> AsyncIterator[Any]:
    """The whole service (SQLite, or PostgreSQL with TEST_DATABASE_URL), two keys, 3 API calls a minute each."""
    from stitcher.app import init_app as init_service

    limited_settings = dataclasses.replace(settings, api_keys=(API_KEY, "other-key"), worker_enabled=False,
                                           rate_limit_api=parse_rate("3/1m"))
    yield await aiohttp_client(init_service(limited_settings))


async def test_an_api_key_past_its_limit_is_429_with_retry_after(api_client: Any) -> None:
    """A key's fourth call in a minute is a JSON 429 with Retry-After; nothing of it is done."""
    for i in range(3):
        r = await api_client.post("/api/v1/contact", json={"externalCustomerId": f"C-{i}"}, headers=auth())
        assert r.status in (200, 201), await r.text()
    r = await api_client.post("/api/v1/contact", json={"externalCustomerId": "C-refused"}, headers=auth())
    await assert_limited(r)
    assert r.headers["X-Request-Id"]
    r = await api_client.get("/api/v1/contacts", params={"externalCustomerId": "C-refused"},
                             headers=auth("other-key"))
    assert r.status == 200 and await r.json() == [], await r.text()


async def test_each_api_key_has_its_own_bucket(api_client: Any) -> None:
    """One key past its limit leaves another key's calls alone; failed auth takes no token."""
    for _ in range(5):
        assert (await api_client.get("/api/v1/account/info", headers=auth("wrong"))).status == 401
    for _ in range(3):
        assert (await api_client.get("/api/v1/account/info", headers=auth())).status == 200
    await assert_limited(await api_client.get("/api/v1/account/info", headers=auth()))
    for _ in range(3):
        assert (await api_client.get("/api/v1/account/info", headers=auth("other-key"))).status == 200
    await assert_limited(await api_client.get("/api/v1/account/info", headers=auth("other-key")))


async def test_the_tracking_routes_do_not_spend_an_api_keys_tokens(api_client: Any) -> None:
    """Health, metrics and beacons are outside the per-key limit."""
    for _ in range(5):
        assert (await api_client.get("/healthz")).status == 200
        assert (await post(api_client, beacon(ev()))).status == 204
    for _ in range(3):
        assert (await api_client.get("/api/v1/account/info", headers=auth())).status == 200


async def test_the_api_limit_holds_after_redis_lost_its_scripts(api_client: Any, redis_client: Redis) -> None:
    """After SCRIPT FLUSH (a Redis restart) the API's bucket script is loaded again: no call passes for free."""
    assert (await api_client.get("/api/v1/account/info", headers=auth())).status == 200
    await redis_client.script_flush()
    for _ in range(2):
        assert (await api_client.get("/api/v1/account/info", headers=auth())).status == 200
    await assert_limited(await api_client.get("/api/v1/account/info", headers=auth()))


async def test_a_failing_api_limiter_lets_calls_through(api_client: Any, redis_client: Redis) -> None:
    """When the limiter's Redis call fails the API answers as without a limit, never a 500."""
    from tracker.ratelimit import API
    from tracker.routes import LIMITER

    name = api_client.server.app[LIMITER].api_key_name(API_KEY)
    await redis_client.set(keys.bucket(API, name), "not a bucket")
    for _ in range(5):
        r = await api_client.get("/api/v1/account/info", headers=auth())
        assert r.status == 200, await r.text()
    assert await redis_client.get(keys.bucket(API, name)) == b"not a bucket"
