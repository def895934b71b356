"""The tracker app (SPEC §2) on a real Redis: beacons in, visitor histories out, and the operator endpoints."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gzip
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse, DummyCookieJar, web
from aiohttp.test_utils import TestClient
from multidict import MultiDict
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from tests.conftest import auth
from tests.edge_server import EdgeTestServer
from tests.redis_cluster import sync_client
from tracker.app import init_app
from tracker.eventlog import dedupe_token
from tracker.keys import REJECTED, VisitorKeys
from tracker.routes import EVENTLOG
from tracker.script import Script
from tracker.settings import Settings
from tracker.visitor import COOKIE, parse_visitor_id

CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0.0.0 Safari/537.36")
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
SHOP = "https://shop.example"
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


# --- helpers ------------------------------------------------------------------------------------------


def now_ms() -> int:
    return int(time.time() * 1000)


def ev(id: str | None = None, type: str = "page_view", **fields: Any) -> dict[str, Any]:
    """A valid event; ``ts`` defaults to a second ago."""
    return {"id": id or str(uuid.uuid4()), "type": type, "ts": now_ms() - 1000, **fields}


def beacon(*events: dict[str, Any], vid: str | None = None, **fields: Any) -> bytes:
    data: dict[str, Any] = {"sent_at": now_ms(), "events": list(events) or [ev()], **fields}
    if vid is not None:
        data["vid"] = vid
    return orjson.dumps(data)


async def post(client: Client, raw: bytes, content_type: str = "text/plain;charset=UTF-8",
               **headers: str) -> ClientResponse:
    return await client.post("/t", data=raw, headers={"Content-Type": content_type, **headers})


async def history(client: Client, vid: str) -> list[dict[str, Any]]:
    r = await client.get(f"/api/v1/visitor/{vid}/events", headers=auth())
    assert r.status == 200, await r.text()
    data = await r.json()
    assert data["visitorId"] == vid
    return list(data["events"])


async def rejected(client: Client) -> list[dict[str, Any]]:
    r = await client.get("/api/v1/tracker/rejected", headers=auth())
    assert r.status == 200, await r.text()
    return list((await r.json())["rejected"])


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus exposition ``text`` (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def all_keys(r: Redis) -> set[bytes]:
    keys: Any = await r.keys("*")
    return set(keys)


@pytest.fixture(params=["edge", "aiohttp"])
def make_client(aiohttp_client: Any, request: pytest.FixtureRequest) -> MakeClient:
    """A client for the tracker built from given settings; no cookie jar (tests send cookies explicitly).

    Every test runs twice: through the edge (``stitcher serve``'s listener, which answers the tracking routes
    itself) and through the aiohttp application alone (the routes' other front): both answer alike."""

    async def make(settings: Settings, **kwargs: Any) -> Client:
        kwargs.setdefault("cookie_jar", DummyCookieJar())
        kwargs.setdefault("headers", {"User-Agent": CHROME})
        app = init_app(settings)
        server = EdgeTestServer(app) if request.param == "edge" else app
        return await aiohttp_client(server, **kwargs)  # type: ignore[no-any-return]

    return make


@pytest.fixture
async def client(make_client: MakeClient, tracker_settings: Settings) -> AsyncIterator[Client]:
    yield await make_client(tracker_settings)


@pytest.fixture
def vkeys(tracker_settings: Settings) -> Callable[[str], VisitorKeys]:
    return lambda vid: VisitorKeys(vid, tracker_settings.partitions)


# --- histories ----------------------------------------------------------------------------------------


async def test_beacon_is_in_redis_when_the_response_arrives(client: Client, redis_client: Redis,
                                                            vkeys: Callable[[str], VisitorKeys]) -> None:
    """A 204 means the event is already in the visitor's Redis history (no write-behind)."""
    vid = str(uuid.uuid4())
    r = await post(client, beacon(ev("e1", url="https://shop.example/p/1"), vid=vid))
    assert r.status == 204, await r.text()
    assert await r.read() == b""
    stored = [orjson.loads(x) for x in await redis_client.lrange(vkeys(vid).events, 0, -1)]
    assert [(e["id"], e["url"]) for e in stored] == [("e1", "https://shop.example/p/1")]
    assert await redis_client.sismember(vkeys(vid).ids, dedupe_token("e1"))


async def test_histories_of_two_visitors_do_not_mix(client: Client) -> None:
    """Each visitor's history holds only its own events."""
    ann, bob = str(uuid.uuid4()), str(uuid.uuid4())
    assert (await post(client, beacon(ev("a1"), ev("a2"), vid=ann))).status == 204
    assert (await post(client, beacon(ev("b1"), vid=bob))).status == 204
    assert (await post(client, beacon(ev("a3"), vid=ann))).status == 204
    assert [e["id"] for e in await history(client, ann)] == ["a1", "a2", "a3"]
    assert [e["id"] for e in await history(client, bob)] == ["b1"]


async def test_history_is_oldest_first_by_derived_time(client: Client) -> None:
    """Events come back oldest first by server-derived time, whatever order they arrived in."""
    vid = str(uuid.uuid4())
    sent = now_ms()
    # one batch, events listed out of order
    # sent_at is the clock reading the ts values are relative to: a fresh one read a moment later (as the
    # default is) would add the delay between the two readings, on a loaded machine more than 1 ms
    raw = beacon(ev("second", ts=sent - 20_000), ev("first", ts=sent - 40_000), ev("third", ts=sent - 1), vid=vid,
                 sent_at=sent)
    assert (await post(client, raw)).status == 204
    # a later batch of events queued offline an hour ago goes before all of them
    sent2 = now_ms()
    raw2 = orjson.dumps({"vid": vid, "sent_at": sent2,
                         "events": [ev("offline", ts=sent2 - 3_600_000)]})
    assert (await post(client, raw2)).status == 204
    events = await history(client, vid)
    assert [e["id"] for e in events] == ["offline", "first", "second", "third"]
    times = [e["time"] for e in events]
    assert times == sorted(times)
    for e in events:
        assert e["time"] <= e["received_at"]
    assert events[1]["received_at"] - events[1]["time"] == pytest.approx(40_000, abs=1)


async def test_history_shows_what_the_page_sent(client: Client) -> None:
    """The support view shows type, url, ref, title and props of each event as sent."""
    vid = str(uuid.uuid4())
    event = ev("e1", type="add_to_cart", url="https://shop.example/p/1", ref="https://google.com/",
               title="Shoes — €49", props={"sku": "S-1", "qty": 2, "tags": ["a", "b"]})
    assert (await post(client, beacon(event, vid=vid))).status == 204
    (got,) = await history(client, vid)
    for name in ("id", "type", "ts", "url", "ref", "title", "props"):
        assert got[name] == event[name]
    assert abs(got["received_at"] - now_ms()) < 60_000
    assert got["time"] <= got["received_at"]
    assert "rt" not in got and "t" not in got  # spelled out as received_at / time


async def test_a_linked_visitors_new_events_go_to_its_contact_stream(
        client: Client, redis_client: Redis, vkeys: Callable[[str], VisitorKeys]) -> None:
    """Once a visitor is linked to a contact, its new beacons feed the contact, not the anonymous log."""
    vid = str(uuid.uuid4())
    assert client.app is not None
    await client.app[EVENTLOG].claim(vid, 42)
    assert (await post(client, beacon(ev("after-link"), vid=vid))).status == 204
    assert await redis_client.llen(vkeys(vid).events) == 0
    entries: Any = await redis_client.xrange(vkeys(vid).linked_stream)
    assert [(f[b"c"], f[b"v"].decode(), orjson.loads(f[b"e"])["id"]) for _, f in entries] == [
        (b"42", vid, "after-link")]
    r = await client.get(f"/api/v1/visitor/{vid}/events", headers=auth())
    assert r.status == 200
    assert await r.json() == {"visitorId": vid, "linkedContactId": 42, "events": []}


# --- idempotency -------------------------------------------------------------------------------------


async def test_the_same_batch_posted_twice_is_stored_once(client: Client, redis_client: Redis,
                                                          vkeys: Callable[[str], VisitorKeys]) -> None:
    """A retried beacon (same event ids) does not duplicate the history."""
    vid = str(uuid.uuid4())
    raw = beacon(ev("e1"), ev("e2"), vid=vid)
    assert (await post(client, raw)).status == 204
    assert (await post(client, raw)).status == 204
    assert await redis_client.llen(vkeys(vid).events) == 2
    assert [e["id"] for e in await history(client, vid)] == ["e1", "e2"]
    # a later batch repeating one old id adds only the new event
    assert (await post(client, beacon(ev("e2"), ev("e3"), vid=vid))).status == 204
    assert await redis_client.llen(vkeys(vid).events) == 3
    text = await (await client.get("/metrics")).text()
    assert metric(text, "stitcher_tracker_events_total", result="duplicate") == 3
    assert metric(text, "stitcher_tracker_events_total", result="accepted") == 3


async def test_the_same_id_twice_in_one_batch_is_stored_once(client: Client, redis_client: Redis,
                                                             vkeys: Callable[[str], VisitorKeys]) -> None:
    """Two events with one id in the same beacon are one stored event."""
    vid = str(uuid.uuid4())
    assert (await post(client, beacon(ev("dup"), ev("dup"), vid=vid))).status == 204
    assert await redis_client.llen(vkeys(vid).events) == 1


# --- retention: TTL and cap ---------------------------------------------------------------------------


async def test_history_expires_after_anon_ttl_days(client: Client, redis_client: Redis,
                                                   tracker_settings: Settings,
                                                   vkeys: Callable[[str], VisitorKeys]) -> None:
    """Anonymous history gets a TTL of ANON_TTL_DAYS (30 by default) on every key of the visitor."""
    vid = str(uuid.uuid4())
    assert (await post(client, beacon(vid=vid))).status == 204
    assert tracker_settings.anon_ttl_days == 30
    for key in (vkeys(vid).events, vkeys(vid).ids):
        assert 30 * 86_400 - 60 <= await redis_client.ttl(key) <= 30 * 86_400


async def test_anon_ttl_days_is_configurable(make_client: MakeClient, redis_client: Redis,
                                             tracker_settings: Settings,
                                             vkeys: Callable[[str], VisitorKeys]) -> None:
    """A configured ANON_TTL_DAYS sets the history's TTL."""
    client = await make_client(dataclasses.replace(tracker_settings, anon_ttl_days=2))
    vid = str(uuid.uuid4())
    assert (await post(client, beacon(vid=vid))).status == 204
    for key in (vkeys(vid).events, vkeys(vid).ids):
        assert 2 * 86_400 - 60 <= await redis_client.ttl(key) <= 2 * 86_400


async def test_activity_refreshes_the_ttl(make_client: MakeClient, redis_client: Redis,
                                          tracker_settings: Settings,
                                          vkeys: Callable[[str], VisitorKeys]) -> None:
    """Expiry counts from the visitor's last activity: a new event pushes it back to the full TTL."""
    client = await make_client(dataclasses.replace(tracker_settings, anon_ttl_days=1))
    vid = str(uuid.uuid4())
    k = vkeys(vid)
    assert (await post(client, beacon(ev("e1"), vid=vid))).status == 204
    for key in (k.events, k.ids):  # as if most of the day had passed
        await redis_client.expire(key, 100)
    assert (await post(client, beacon(ev("e2"), vid=vid))).status == 204
    for key in (k.events, k.ids):
        assert 86_400 - 60 <= await redis_client.ttl(key) <= 86_400
    assert await redis_client.llen(k.events) == 2


async def test_events_past_the_history_cap_are_rejected_with_a_reason(
        make_client: MakeClient, redis_client: Redis, tracker_settings: Settings,
        vkeys: Callable[[str], VisitorKeys]) -> None:
    """Past HISTORY_CAP events a visitor's further events are not stored but listed as rejected."""
    client = await make_client(dataclasses.replace(tracker_settings, history_cap=3))
    vid = str(uuid.uuid4())
    r = await post(client, beacon(*(ev(f"e{i}") for i in range(5)), vid=vid))
    assert r.status == 204
    assert await redis_client.llen(vkeys(vid).events) == 3
    assert [e["id"] for e in await history(client, vid)] == ["e0", "e1", "e2"]
    assert (await post(client, beacon(ev("e5"), vid=vid))).status == 204
    assert await redis_client.llen(vkeys(vid).events) == 3
    records = await rejected(client)
    assert sorted(x["event_id"] for x in records) == ["e3", "e4", "e5"]
    for x in records:
        assert x["vid"] == vid
        assert "cap" in x["reason"]
    # another visitor is not affected by this one's cap
    other = str(uuid.uuid4())
    assert (await post(client, beacon(ev("o1"), vid=other))).status == 204
    assert await redis_client.llen(vkeys(other).events) == 1


# --- rejected events and malformed requests ----------------------------------------------------------


async def test_bad_events_are_recorded_and_good_ones_stored(client: Client, redis_client: Redis,
                                                            vkeys: Callable[[str], VisitorKeys]) -> None:
    """A batch with good and bad events answers 204, stores the good ones and lists each bad one with its reason."""
    vid = str(uuid.uuid4())
    raw = beacon(ev("good-1"), ev("bad-ts", ts=1_700_000_000), ev("good-2"), ev("bad-url", url=42),
                 {"type": "no id"}, vid=vid)
    r = await post(client, raw)
    assert r.status == 204, await r.text()
    assert [e["id"] for e in await history(client, vid)] == ["good-1", "good-2"]
    records = await rejected(client)
    assert len(records) == 3
    by_reason = {x["reason"].split(":")[0]: x for x in records}
    assert set(by_reason) == {"ts", "url", "id"}
    assert by_reason["ts"]["event_id"] == "bad-ts"
    assert by_reason["url"]["event_id"] == "bad-url"
    assert orjson.loads(by_reason["url"]["event"])["url"] == 42
    assert orjson.loads(by_reason["id"]["event"]) == {"type": "no id"}
    for x in records:
        assert x["vid"] == vid
        assert abs(x["at"] - now_ms()) < 60_000
    assert await redis_client.xlen(REJECTED) == 3
    text = await (await client.get("/metrics")).text()
    assert metric(text, "stitcher_tracker_events_total", result="rejected") == 3
    assert metric(text, "stitcher_tracker_events_total", result="accepted") == 2


async def test_rejected_list_is_newest_first_and_honours_count(client: Client) -> None:
    """The operator list shows the most recent rejections first, ``count`` at most."""
    for i in range(3):
        assert (await post(client, beacon(ev(f"bad-{i}", type="")))).status == 204
    assert [x["event_id"] for x in await rejected(client)] == ["bad-2", "bad-1", "bad-0"]
    r = await client.get("/api/v1/tracker/rejected", params={"count": "2"}, headers=auth())
    assert [x["event_id"] for x in (await r.json())["rejected"]] == ["bad-2", "bad-1"]
    r = await client.get("/api/v1/tracker/rejected", params={"count": "lots"}, headers=auth())
    assert r.status == 400
    assert (await r.json())["errors"][0]["field"] == "count"


async def test_a_batch_of_only_bad_events_is_still_answered_and_recorded(client: Client) -> None:
    """When every event is bad the beacon still gets 204 (the script must not retry) and all are listed."""
    r = await post(client, beacon(ev("x", type=""), ev("y", props=[1])))
    assert r.status == 204
    assert sorted(x["event_id"] for x in await rejected(client)) == ["x", "y"]


MALFORMED = [
    pytest.param(b"{not json", "body", id="invalid-json"),
    pytest.param(b"[1, 2]", "body", id="not-an-object"),
    pytest.param(b"", "body", id="empty-body"),
    pytest.param(b'{"vid": "0b7c6a52-3f0e-4a8e-9d55-6c2f1e9b0a11"}', "events", id="no-events"),
    pytest.param(b'{"events": []}', "events", id="empty-events"),
    pytest.param(b'{"vid": "me", "events": [{"id": "e1", "type": "x"}]}', "vid", id="bad-vid"),
    pytest.param(b'{"sent_at": "now", "events": [{"id": "e1", "type": "x"}]}', "sent_at", id="bad-sent-at"),
]


@pytest.mark.parametrize(("raw", "field"), MALFORMED)
async def test_malformed_request_is_400_naming_the_problem_and_stores_nothing(
        client: Client, redis_client: Redis, raw: bytes, field: str) -> None:
    """A malformed beacon gets a 400 JSON error naming the bad field, and nothing reaches Redis."""
    await redis_client.set("pre:existing", "1")
    r = await post(client, raw)
    assert r.status == 400
    assert r.content_type == "application/json"
    data = await r.json()
    assert data["error"] == "validation_failed"
    assert field in [e["field"] for e in data["errors"]]
    assert field in data["message"]
    assert COOKIE not in r.cookies
    assert await all_keys(redis_client) == {b"pre:existing"}


async def test_oversized_body_is_413_and_stores_nothing(client: Client, redis_client: Redis) -> None:
    """A body over 64 KiB gets a 413 JSON error and nothing is stored."""
    raw = beacon(*(ev(url="https://x/" + "u" * 1500) for i in range(50)))
    assert len(raw) > 64 * 1024
    r = await post(client, raw)
    assert r.status == 413
    data = await r.json()
    assert data["error"] == "payload_too_large"
    assert "65536" in data["message"]
    assert await all_keys(redis_client) == set()


async def test_too_many_events_is_413_and_stores_nothing(client: Client, redis_client: Redis) -> None:
    """More than 100 events in one beacon gets a 413 naming the events and nothing is stored."""
    r = await post(client, beacon(*(ev() for _ in range(101))))
    assert r.status == 413
    data = await r.json()
    assert data["error"] == "payload_too_large"
    assert data["field"] == "events"
    assert await all_keys(redis_client) == set()
    assert (await post(client, beacon(*(ev() for _ in range(100))))).status == 204


async def _in_two_parts(raw: bytes) -> AsyncIterator[bytes]:
    """A body that arrives in two TCP writes, as a large beacon does on a real network."""
    yield raw[: len(raw) // 2]
    await asyncio.sleep(0.1)
    yield raw[len(raw) // 2:]


async def test_a_body_that_arrives_in_parts_is_read_whole(client: Client, redis_client: Redis,
                                                          vkeys: Callable[[str], VisitorKeys]) -> None:
    """A valid beacon whose body arrives in several TCP segments is stored like any other."""
    vid = str(uuid.uuid4())
    raw = beacon(*(ev(f"e{i}", url="https://x/" + "u" * 1000) for i in range(20)), vid=vid)
    assert len(raw) < 64 * 1024
    r = await client.post("/t", data=_in_two_parts(raw),
                          headers={"Content-Type": "text/plain", "Content-Length": str(len(raw))})
    assert r.status == 204, await r.text()
    assert await redis_client.llen(vkeys(vid).events) == 20


async def test_a_chunked_oversized_body_is_413(client: Client, redis_client: Redis) -> None:
    """A body over the limit sent without Content-Length (chunked) is a 413 too."""
    raw = beacon(*(ev(url="https://x/" + "u" * 1500) for i in range(60)))
    assert len(raw) > 64 * 1024
    r = await client.post("/t", data=_in_two_parts(raw), headers={"Content-Type": "text/plain"})
    assert r.status == 413, await r.text()
    assert await all_keys(redis_client) == set()


# --- the visitor cookie ------------------------------------------------------------------------------


async def test_new_visitor_gets_a_first_party_cookie(client: Client) -> None:
    """A first beacon is assigned a visitor id, set as an HttpOnly, SameSite=Lax cookie for 400 days."""
    r = await post(client, beacon())
    assert r.status == 204
    vid = r.headers["X-Stitcher-Visitor"]
    assert parse_visitor_id(vid) == vid
    morsel = r.cookies[COOKIE]
    assert morsel.value == vid
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert morsel["max-age"] == str(400 * 86_400)
    assert morsel["path"] == "/"
    assert not morsel["secure"]
    (header,) = r.headers.getall("Set-Cookie")
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Secure" not in header


async def test_cookie_is_secure_behind_https(client: Client) -> None:
    """Behind an https proxy (X-Forwarded-Proto: https) the cookie is marked Secure."""
    r = await post(client, beacon(), **{"X-Forwarded-Proto": "https"})
    assert r.status == 204
    assert r.cookies[COOKIE]["secure"] is True
    assert "Secure" in r.headers["Set-Cookie"]


async def test_cookie_is_refreshed_and_keeps_the_visitor(client: Client) -> None:
    """A returning browser keeps its visitor id and the cookie is re-set with a fresh lifetime."""
    first = await post(client, beacon(ev("e1")))
    vid = first.headers["X-Stitcher-Visitor"]
    again = await post(client, beacon(ev("e2")), Cookie=f"{COOKIE}={vid}")
    assert again.headers["X-Stitcher-Visitor"] == vid
    assert again.cookies[COOKIE].value == vid
    assert again.cookies[COOKIE]["max-age"] == str(400 * 86_400)
    assert [e["id"] for e in await history(client, vid)] == ["e1", "e2"]


async def test_body_vid_is_used_without_a_cookie(client: Client) -> None:
    """Without a cookie, the script's vid from the body names the visitor (normalised to lower case)."""
    vid = str(uuid.uuid4())
    r = await post(client, beacon(ev("e1"), vid=vid.upper()))
    assert r.headers["X-Stitcher-Visitor"] == vid
    assert r.cookies[COOKIE].value == vid
    assert [e["id"] for e in await history(client, vid)] == ["e1"]


async def test_cookie_wins_over_body_vid(client: Client, redis_client: Redis,
                                         vkeys: Callable[[str], VisitorKeys]) -> None:
    """The server-set cookie decides the visitor even when the body names another."""
    cookie_vid, body_vid = str(uuid.uuid4()), str(uuid.uuid4())
    r = await post(client, beacon(ev("e1"), vid=body_vid), Cookie=f"{COOKIE}={cookie_vid}")
    assert r.headers["X-Stitcher-Visitor"] == cookie_vid
    assert r.cookies[COOKIE].value == cookie_vid
    assert await redis_client.llen(vkeys(cookie_vid).events) == 1
    assert await redis_client.llen(vkeys(body_vid).events) == 0


async def test_invalid_cookie_is_ignored(client: Client) -> None:
    """A tampered cookie value is ignored: the body's vid is used and the cookie is repaired."""
    body_vid = str(uuid.uuid4())
    r = await post(client, beacon(ev("e1"), vid=body_vid), Cookie=f"{COOKIE}=tampered")
    assert r.status == 204
    assert r.headers["X-Stitcher-Visitor"] == body_vid
    assert r.cookies[COOKIE].value == body_vid
    r = await post(client, beacon(ev("e2")), Cookie=f"{COOKIE}=../../etc")
    assert r.status == 204
    new = r.headers["X-Stitcher-Visitor"]
    assert parse_visitor_id(new) == new and new != body_vid


async def test_reset_issues_a_new_visitor(client: Client) -> None:
    """``"reset": true`` (stitcher('reset') on sign-out) starts a new visitor despite the cookie: the body's
    vid (the id the script made) or, without one, a new id; the newest id wins over a restored old cookie."""
    old, mine = str(uuid.uuid4()), str(uuid.uuid4())
    assert (await post(client, beacon(ev("before"), vid=old))).status == 204
    r = await post(client, beacon(ev("after"), vid=mine, reset=True), Cookie=f"{COOKIE}={old}")
    assert r.status == 204
    assert r.headers["X-Stitcher-Visitor"] == mine
    assert r.cookies[COOKIE].value == mine
    # a late answer to an older request put the old cookie back: the reset, still sent, wins again
    r = await post(client, beacon(ev("later"), vid=mine, reset=True), Cookie=f"{COOKIE}={old}")
    assert r.cookies[COOKIE].value == mine
    r = await post(client, beacon(ev("anon"), reset=True), Cookie=f"{COOKIE}={old}")
    new = r.headers["X-Stitcher-Visitor"]
    assert new not in (old, mine) and parse_visitor_id(new) == new
    assert r.cookies[COOKIE].value == new
    assert [e["id"] for e in await history(client, mine)] == ["after", "later"]
    assert [e["id"] for e in await history(client, old)] == ["before"]
    assert [e["id"] for e in await history(client, new)] == ["anon"]


# --- content types and CORS -----------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain;charset=UTF-8", "text/plain", "application/json"])
async def test_text_plain_and_json_bodies_are_accepted(client: Client, content_type: str) -> None:
    """sendBeacon's text/plain body (no preflight) is read as JSON, as is application/json."""
    vid = str(uuid.uuid4())
    r = await post(client, beacon(ev("e1"), vid=vid), content_type=content_type)
    assert r.status == 204, await r.text()
    assert [e["id"] for e in await history(client, vid)] == ["e1"]


async def test_allowed_origin_is_echoed_with_credentials(make_client: MakeClient,
                                                         tracker_settings: Settings) -> None:
    """For an allowed origin the response carries CORS headers with credentials, so the cookie is kept."""
    client = await make_client(dataclasses.replace(tracker_settings, allowed_origins=(SHOP,)))
    r = await post(client, beacon(), Origin=SHOP)
    assert r.status == 204
    assert r.headers["Access-Control-Allow-Origin"] == SHOP
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert "X-Stitcher-Visitor" in r.headers["Access-Control-Expose-Headers"]
    assert "Origin" in r.headers["Vary"]


async def test_a_header_sent_twice_counts_by_its_first_value(make_client: MakeClient,
                                                              tracker_settings: Settings) -> None:
    """Two Origin, Cookie or X-Request-Id headers: both fronts read the first, as aiohttp's
    ``headers.get`` does — the visitor, the CORS answer and the request id do not depend on the front."""
    client = await make_client(dataclasses.replace(tracker_settings, allowed_origins=(SHOP, "https://b.example")))
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    headers = MultiDict([("Origin", SHOP), ("Origin", "https://b.example"), ("Cookie", f"{COOKIE}={first}"),
                         ("Cookie", f"{COOKIE}={second}"), ("X-Request-Id", "one"), ("X-Request-Id", "two"),
                         ("Content-Type", "text/plain")])
    r = await client.post("/t", data=beacon(), headers=headers)
    assert r.status == 204
    assert (r.headers["Access-Control-Allow-Origin"], r.headers["X-Stitcher-Visitor"], r.headers["X-Request-Id"]) \
        == (SHOP, first, "one")

async def test_forget_expires_the_visitor_cookie_and_keeps_the_history(make_client: MakeClient,
                                                                         tracker_settings: Settings) -> None:
    """POST /t/forget (consent withdrawn) answers 204 with an expired HttpOnly cookie, readable cross-origin
    (CORS like /t); the anonymous history is not erased on the cookie's word alone."""
    client = await make_client(dataclasses.replace(tracker_settings, allowed_origins=(SHOP,)))
    vid = str(uuid.uuid4())
    assert (await post(client, beacon(ev("e1"), vid=vid))).status == 204
    r = await client.post("/t/forget", headers={"Origin": SHOP, "Cookie": f"{COOKIE}={vid}"})
    assert r.status == 204
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=;") and "Max-Age=0" in cookie and "HttpOnly" in cookie
    assert "Path=/" in cookie
    assert r.headers["Access-Control-Allow-Origin"] == SHOP
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert [e["id"] for e in await history(client, vid)] == ["e1"]


async def test_other_origins_get_no_cors_headers(make_client: MakeClient, tracker_settings: Settings) -> None:
    """When ALLOWED_ORIGINS is a list, another site's origin is not granted access."""
    client = await make_client(dataclasses.replace(tracker_settings, allowed_origins=(SHOP,)))
    for origin in ("https://evil.example", "https://shop.example.evil.com", "http://shop.example"):
        r = await post(client, beacon(), Origin=origin)
        assert "Access-Control-Allow-Origin" not in r.headers
        assert "Access-Control-Allow-Credentials" not in r.headers
        r = await client.options("/t", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        assert "Access-Control-Allow-Origin" not in r.headers


async def test_any_origin_is_echoed_by_default(client: Client) -> None:
    """With the default ALLOWED_ORIGINS=* the caller's origin is echoed (never '*', which forbids credentials)."""
    r = await post(client, beacon(), Origin="https://any.example")
    assert r.headers["Access-Control-Allow-Origin"] == "https://any.example"
    assert r.headers["Access-Control-Allow-Credentials"] == "true"


async def test_preflight_allows_a_json_post(make_client: MakeClient, tracker_settings: Settings) -> None:
    """An OPTIONS preflight for a JSON POST from an allowed origin is granted and cacheable."""
    client = await make_client(dataclasses.replace(tracker_settings, allowed_origins=(SHOP,)))
    r = await client.options("/t", headers={"Origin": SHOP, "Access-Control-Request-Method": "POST",
                                            "Access-Control-Request-Headers": "content-type"})
    assert r.status in (200, 204)
    assert r.headers["Access-Control-Allow-Origin"] == SHOP
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "content-type" in r.headers["Access-Control-Allow-Headers"].lower()
    assert int(r.headers["Access-Control-Max-Age"]) > 0


async def test_error_responses_carry_cors_headers(make_client: MakeClient, tracker_settings: Settings) -> None:
    """A 400 or 413 is readable by the page's script (CORS headers present), so it can drop the batch."""
    client = await make_client(dataclasses.replace(tracker_settings, allowed_origins=(SHOP,)))
    r = await post(client, b"{oops", Origin=SHOP)
    assert r.status == 400
    assert r.headers["Access-Control-Allow-Origin"] == SHOP
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    r = await post(client, beacon(*(ev() for _ in range(101))), Origin=SHOP)
    assert r.status == 413
    assert r.headers["Access-Control-Allow-Origin"] == SHOP


# --- the pixel and the script ------------------------------------------------------------------------


def b64url(raw: bytes, padding: bool) -> str:
    text = base64.urlsafe_b64encode(raw).decode()
    return text if padding else text.rstrip("=")


@pytest.mark.parametrize("padding", [False, True])
async def test_pixel_stores_events_and_answers_a_gif(client: Client, padding: bool) -> None:
    """GET /t.gif?d=<base64url body> stores the events like POST /t and answers an uncacheable 1x1 GIF."""
    vid = str(uuid.uuid4())
    raw = beacon(ev("px1", title="ü & ?"), ev("px2"), vid=vid)
    r = await client.get("/t.gif", params={"d": b64url(raw, padding)})
    assert r.status == 200
    assert r.content_type == "image/gif"
    gif = await r.read()
    assert gif.startswith(b"GIF89a") and len(gif) < 100
    assert "no-store" in r.headers["Cache-Control"]
    assert r.headers["X-Stitcher-Visitor"] == vid
    assert r.cookies[COOKIE].value == vid
    assert [e["id"] for e in await history(client, vid)] == ["px1", "px2"]


async def test_pixel_with_bad_data_is_400_and_stores_nothing(client: Client, redis_client: Redis) -> None:
    """A pixel without ``d``, or with ``d`` that is not base64url JSON, is a 400 naming the problem."""
    for params, field in (({}, "d"), ({"d": "a"}, "d"), ({"d": b64url(b"[1]", False)}, "body")):
        r = await client.get("/t.gif", params=params)
        assert r.status == 400
        assert field in [e["field"] for e in (await r.json())["errors"]]
    assert await all_keys(redis_client) == set()


@pytest.fixture
def script(tracker_settings: Settings) -> Script:
    return Script.load(tracker_settings.static_dir / "t.js")


async def test_script_is_served_gzipped_with_an_etag(make_client: MakeClient, tracker_settings: Settings,
                                                     script: Script) -> None:
    """GET /t.js serves the minified script gzipped to browsers that accept it, cacheable, with an ETag."""
    client = await make_client(tracker_settings, auto_decompress=False)
    r = await client.get("/t.js", headers={"Accept-Encoding": "gzip, deflate, br"})
    assert r.status == 200
    assert r.headers["Content-Encoding"] == "gzip"
    assert "javascript" in r.content_type
    body = await r.read()
    assert gzip.decompress(body) == script.minified
    assert r.headers["ETag"] == script.etag
    assert "max-age" in r.headers["Cache-Control"]
    assert "Accept-Encoding" in r.headers["Vary"]


async def test_script_without_gzip_is_plain(make_client: MakeClient, tracker_settings: Settings,
                                            script: Script) -> None:
    """A client that does not accept gzip gets the plain minified script with the same ETag."""
    client = await make_client(tracker_settings, auto_decompress=False)
    r = await client.get("/t.js", headers={"Accept-Encoding": "identity"})
    assert r.status == 200
    assert "Content-Encoding" not in r.headers
    assert await r.read() == script.minified
    assert r.headers["ETag"] == script.etag


async def test_script_revalidation_answers_304(client: Client, script: Script) -> None:
    """A browser revalidating with the current ETag gets 304 and no body; a stale ETag gets the script."""
    r = await client.get("/t.js", headers={"If-None-Match": script.etag})
    assert r.status == 304
    assert await r.read() == b""
    assert r.headers["ETag"] == script.etag
    r = await client.get("/t.js", headers={"If-None-Match": '"stale"'})
    assert r.status == 200
    assert await r.read() == script.minified


# --- bots ----------------------------------------------------------------------------------------------


async def test_crawler_events_are_flagged_as_bot(client: Client) -> None:
    """Events sent by a crawler (Googlebot) are stored with ``"bot": true``; a browser's are not flagged."""
    bot_vid, human_vid = str(uuid.uuid4()), str(uuid.uuid4())
    assert (await post(client, beacon(vid=bot_vid), **{"User-Agent": GOOGLEBOT})).status == 204
    assert (await post(client, beacon(vid=human_vid))).status == 204
    assert [e.get("bot") for e in await history(client, bot_vid)] == [True]
    assert [e.get("bot") for e in await history(client, human_vid)] == [None]


# --- the visitor API and operations --------------------------------------------------------------------


async def test_visitor_history_needs_an_api_key(client: Client) -> None:
    """The visitor history is private: 401 JSON without credentials or with a wrong key."""
    vid = str(uuid.uuid4())
    assert (await post(client, beacon(vid=vid))).status == 204
    for headers in ({}, auth("wrong-key"), {"Authorization": "Bearer test-key"},
                    {"Authorization": "Basic !!!"}):
        r = await client.get(f"/api/v1/visitor/{vid}/events", headers=headers)
        assert r.status == 401
        assert (await r.json())["error"] == "unauthorized"
        assert r.headers["WWW-Authenticate"].startswith("Basic")
    r = await client.get("/api/v1/tracker/rejected")
    assert r.status == 401


async def test_unknown_visitor_is_404(client: Client) -> None:
    """A visitor with no recorded history is a 404 JSON error; a malformed id is a 400."""
    r = await client.get(f"/api/v1/visitor/{uuid.uuid4()}/events", headers=auth())
    assert r.status == 404
    assert (await r.json())["error"] == "not_found"
    r = await client.get("/api/v1/visitor/not-a-visitor/events", headers=auth())
    assert r.status == 400
    assert (await r.json())["errors"][0]["field"] == "vid"


async def test_healthz(client: Client) -> None:
    """/healthz answers 200 while the process is alive."""
    r = await client.get("/healthz")
    assert r.status == 200
    assert (await r.json())["status"] == "ok"


async def test_readyz_with_redis(client: Client) -> None:
    """/readyz answers 200 when Redis answers."""
    r = await client.get("/readyz")
    assert r.status == 200
    data = await r.json()
    assert data["status"] == "ok"
    assert data["checks"]["redis"] is True


async def test_metrics_count_requests_events_and_write_batches(client: Client) -> None:
    """/metrics exposes the request counter, accepted/rejected event counters and the write batch histogram."""
    assert (await post(client, beacon(ev(), ev(), ev(type="")))).status == 204
    assert (await post(client, b"nope")).status == 400
    r = await client.get("/metrics")
    assert r.status == 200
    assert r.content_type == "text/plain"
    text = await r.text()
    assert metric(text, "stitcher_http_requests_total", route="/t", method="POST", status="204") == 1
    assert metric(text, "stitcher_http_requests_total", route="/t", method="POST", status="400") == 1
    assert metric(text, "stitcher_tracker_events_total", result="accepted") == 2
    assert metric(text, "stitcher_tracker_events_total", result="rejected") == 1
    assert metric(text, "stitcher_tracker_events_total", result="malformed_request") == 1
    assert metric(text, "stitcher_redis_write_batch_size_count") >= 1
    assert "stitcher_http_request_duration_seconds_bucket" in text


# --- DESIGN invariants 1 and 2 -------------------------------------------------------------------------

NO_SQL_PROBE = r"""
import asyncio, base64, importlib.util, json, os, sys, uuid
from dataclasses import replace
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from tracker.app import init_app
from tracker.settings import Settings

FORBIDDEN = {"sqlalchemy", "sqlmodel", "stitcher", "aiosqlite", "asyncpg", "alembic"}


async def main():
    settings = replace(Settings.from_env(), static_dir=Path(os.environ["STATIC_DIR"]))
    assert settings.database_url.startswith("postgresql"), settings.database_url
    vid = str(uuid.uuid4())
    body = json.dumps({"vid": vid, "events": [{"id": "e1", "type": "page_view"}]}).encode()
    pixel = json.dumps({"vid": vid, "events": [{"id": "e2", "type": "page_view"}]}).encode()
    key = base64.b64encode(b"backend:" + os.environ["API_KEYS"].encode()).decode()
    async with TestClient(TestServer(init_app(settings))) as client:
        r = await client.post("/t", data=body, headers={"Content-Type": "text/plain"})
        assert r.status == 204, r.status
        r = await client.get("/t.gif", params={"d": base64.urlsafe_b64encode(pixel).decode()})
        assert r.status == 200, r.status
        r = await client.get(f"/api/v1/visitor/{vid}/events", headers={"Authorization": "Basic " + key})
        assert r.status == 200, r.status
        for path in ("/readyz", "/metrics", "/t.js"):
            assert (await client.get(path)).status == 200, path
    print(json.dumps({
        "vid": vid,
        "installed": sorted(m for m in FORBIDDEN if importlib.util.find_spec(m) is not None),
        "loaded": sorted({m.split(".")[0] for m in sys.modules} & FORBIDDEN),
    }))


asyncio.run(main())
"""


def test_tracking_never_touches_sql(clean_redis: str, tracker_settings: Settings) -> None:
    """The tracking path works with an unreachable database and never even imports SQL or the stitcher."""
    env = {**os.environ, "REDIS_URL": clean_redis, "API_KEYS": "probe-key",
           "DATABASE_URL": "postgresql+asyncpg://nobody:nothing@127.0.0.1:1/nowhere",
           "STATIC_DIR": str(tracker_settings.static_dir), "PYTHONPATH": str(Path.cwd())}
    done = subprocess.run([sys.executable, "-c", NO_SQL_PROBE], env=env, capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[2], check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "sqlalchemy" in report["installed"]  # so their absence below means something
    assert report["loaded"] == []
    r = sync_client(clean_redis)
    try:
        stored = [orjson.loads(x)["id"] for x in r.lrange(VisitorKeys(report["vid"], 1024).events, 0, -1)]
    finally:
        r.close()
    assert stored == ["e1", "e2"]


async def test_concurrent_beacons_share_pipelines_and_are_all_stored(
        make_client: MakeClient, tracker_settings: Settings, redis_client: Redis,
        vkeys: Callable[[str], VisitorKeys]) -> None:
    """200 concurrent beacons all get 204 with their event in Redis, written in shared pipelines."""
    # a generous timeout: this test is about batching, and a busy CI machine must not turn it into 503s
    client = await make_client(dataclasses.replace(tracker_settings, redis_timeout=10.0))
    vids = [str(uuid.uuid4()) for _ in range(200)]
    responses = await asyncio.gather(*(post(client, beacon(ev(f"e-{v}"), vid=v)) for v in vids))
    assert [r.status for r in responses] == [204] * 200
    async with redis_client.pipeline(transaction=False) as pipe:
        for v in vids:
            pipe.lrange(vkeys(v).events, 0, -1)
        stored = await pipe.execute()
    assert [[orjson.loads(x)["id"] for x in s] for s in stored] == [[f"e-{v}"] for v in vids]
    text = await (await client.get("/metrics")).text()
    flushes = metric(text, "stitcher_redis_write_batch_size_count")
    single = metric(text, "stitcher_redis_write_batch_size_bucket", le="1.0")
    # each beacon's token from its client's bucket (the default rate limit) and its append
    assert metric(text, "stitcher_redis_write_batch_size_sum") == 2 * 200
    assert flushes - single >= 1, "no flush carried more than one command"
    assert flushes < 200


# --- the beacon accounts for itself (it skips the generic edge middleware) ---------------------------------

async def test_beacon_writes_one_request_line_and_echoes_the_request_id(
        make_client: MakeClient, tracker_settings: Settings) -> None:
    """POST /t logs one canonical line with route, status and the request id it answered with (here every
    good beacon is sampled: BEACON_LOG_SAMPLE=1)."""
    from structlog.testing import capture_logs

    client = await make_client(dataclasses.replace(tracker_settings, beacon_log_sample=1.0))
    with capture_logs() as logs:
        ok = await post(client, beacon(), **{"X-Request-Id": "req-beacon-1"})
        bad = await post(client, b"{")
    assert ok.status == 204 and ok.headers["X-Request-Id"] == "req-beacon-1"
    assert bad.status == 400 and bad.headers["X-Request-Id"]
    lines = [e for e in logs if e.get("event") == "request"]
    assert [(e["route"], e["method"], e["status"], e["error"]) for e in lines] == [
        ("/t", "POST", 204, None), ("/t", "POST", 400, "validation_failed")]
    assert lines[0]["request_id"] == "req-beacon-1" and lines[1]["request_id"] == bad.headers["X-Request-Id"]


@pytest.mark.parametrize("sample, logged", [(0.0, 0), (0.25, 2), (1.0, 8)])
async def test_good_beacons_write_a_request_line_only_when_sampled(
        make_client: MakeClient, tracker_settings: Settings, sample: float, logged: int) -> None:
    """A collector taking thousands of beacons a second cannot write a line each: good beacons are logged one
    in 1/BEACON_LOG_SAMPLE and counted in the metrics all the same; every error writes its line."""
    from structlog.testing import capture_logs

    client = await make_client(dataclasses.replace(tracker_settings, beacon_log_sample=sample))
    with capture_logs() as logs:
        for _ in range(8):
            assert (await post(client, beacon())).status == 204
        assert (await post(client, b"[")).status == 400
    lines = [(e["status"], e["error"]) for e in logs if e.get("event") == "request"]
    assert lines == [(204, None)] * logged + [(400, "validation_failed")]
    metrics = await (await client.get("/metrics")).text()
    assert 'stitcher_http_requests_total{method="POST",route="/t",status="204"} 8.0' in metrics


async def test_an_unexpected_beacon_failure_is_a_json_500_the_browser_can_read(
        make_client: MakeClient, tracker_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the beacon path answers 500 JSON with the request id and CORS headers, logs the traceback
    and counts the request, like every other route."""
    from structlog.testing import capture_logs

    import tracker.answers

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(tracker.answers, "parse_batch", broken)
    client = await make_client(dataclasses.replace(tracker_settings, allowed_origins=(SHOP,)))
    with capture_logs() as logs:
        r = await post(client, beacon(), Origin=SHOP)
    assert r.status == 500
    body = await r.json()
    assert body["error"] == "internal_error" and body["requestId"] == r.headers["X-Request-Id"]
    assert r.headers["Access-Control-Allow-Origin"] == SHOP
    assert [e["event"] for e in logs] == ["unhandled error", "request"]
    assert logs[0]["log_level"] == "error"
    assert (logs[1]["status"], logs[1]["error"]) == (500, "internal_error")
    text = await (await client.get("/metrics")).text()
    assert metric(text, "stitcher_http_requests_total", route="/t", method="POST", status="500") == 1
