"""Robustness: concurrent identity races, poison events, partial bodies, database outages, odd input."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import orjson

from stitcher.app import WORKER, init_app
from tests.conftest import auth
from tests.helpers import beacon, call, page_views
from tests.integration.test_stories import timeline
from tracker import keys
from tracker.eventlog import LinkedEvent


async def test_two_ids_reaching_one_unidentified_contact_by_different_channels(client: Any) -> None:
    """Two requests with different new external IDs that find one unidentified contact (one by email, one by
    token) never both write it: exactly one takes it over, the other gets a new contact; no ID is lost."""
    for round_ in range(8):
        email, token = f"u{round_}-{uuid.uuid4().hex[:6]}@example.com", f"tok-{uuid.uuid4().hex}"
        status, u = await call(client, "POST", "/api/v1/contact", {"channels": [
            {"type": "email", "value": email}, {"type": "mobilepush", "value": token}]})
        assert status == 200
        x, y = f"X-{uuid.uuid4().hex[:8]}", f"Y-{uuid.uuid4().hex[:8]}"
        (s1, r1), (s2, r2) = await asyncio.gather(
            call(client, "POST", "/api/v1/contact", {"externalCustomerId": x,
                                                     "channels": [{"type": "email", "value": email}]}),
            call(client, "POST", "/api/v1/contact", {"externalCustomerId": y,
                                                     "channels": [{"type": "mobilepush", "value": token}]}))
        assert s1 == s2 == 200, (r1, r2)
        assert {r1["id"], r2["id"]} & {u["id"]} and r1["id"] != r2["id"]
        for ext, answer in ((x, r1), (y, r2)):
            status, found = await call(client, "GET", "/api/v1/contacts", params={"externalCustomerId": ext})
            assert [c["id"] for c in found] == [answer["id"]]
            assert found[0]["externalCustomerId"] == ext


async def test_a_poison_linked_event_is_rejected_and_the_rest_still_land(client: Any, redis_client: Any) -> None:
    """An entry of the linked stream that cannot be put on a timeline is recorded as rejected and
    acknowledged; the good events of the same batch still reach the timeline."""
    vid = str(uuid.uuid4())
    status, c = await call(client, "POST", "/api/v1/contact/subscribe",
                           {"contact": {"externalCustomerId": f"P-{uuid.uuid4().hex[:8]}", "visitorIds": [vid]}})
    assert status == 200
    worker = client.app[WORKER]
    stream = keys.VisitorKeys(vid, 1024).linked_stream
    good = {"id": "good-1", "type": "page_view", "t": 1, "rt": 1}
    bad = {"id": "bad-1", "type": "x" * 500, "t": 1, "rt": 1}  # too long for the timeline's type column
    events = [LinkedEvent(stream, "0-1", c["id"], vid, bad), LinkedEvent(stream, "0-2", c["id"], vid, good)]
    assert await worker.drain(events) == 2
    tl = await timeline(client, c["id"])
    ids = [e["id"] for e in tl["events"]]
    if client.app[WORKER].db.dialect == "postgresql":
        assert ids == ["good-1"]
        status, body = await call(client, "GET", "/api/v1/tracker/rejected")
        assert any(r["event_id"] == "bad-1" and "timeline insert failed" in r["reason"] for r in body["rejected"])
    else:  # SQLite does not enforce VARCHAR lengths: both land, and nothing is rejected
        assert sorted(ids) == ["bad-1", "good-1"]


async def test_a_json_body_arriving_in_parts_is_read_whole(client: Any) -> None:
    """A contact body sent in several chunks is read whole, not judged on its first part."""
    body = orjson.dumps({"externalCustomerId": f"B-{uuid.uuid4().hex[:8]}", "firstName": "A" * 200,
                         "fields": [{"id": i, "value": "v" * 100} for i in range(300)]})

    async def parts() -> Any:
        for start in range(0, len(body), 1000):
            yield body[start:start + 1000]
            await asyncio.sleep(0)

    r = await client.post("/api/v1/contact", data=parts(), headers={**auth(), "Content-Type": "application/json"})
    assert r.status == 200, await r.text()


async def test_database_unreachable_answers_503(aiohttp_client: Any, settings: Any) -> None:
    """With the database down, contact calls answer 503 JSON with Retry-After — never a 500 or a hang."""
    down = dataclasses.replace(settings, database_url="postgresql+asyncpg://postgres@127.0.0.1:1/none",
                               worker_enabled=False)
    client = await aiohttp_client(init_app(down))
    r = await client.post("/api/v1/contact", json={"externalCustomerId": "DOWN-1"}, headers=auth())
    assert r.status == 503, await r.text()
    assert r.headers["Retry-After"] and (await r.json())["error"] == "unavailable"
    r = await client.get("/readyz")
    assert r.status == 503 and (await r.json())["checks"] == {"redis": True, "sql": False}


async def test_odd_numbers_are_400_not_500(client: Any) -> None:
    """Ids past 64 bits and non-ASCII digits in paths and parameters are refused with 400 JSON."""
    for method, path, params, body in (
        ("POST", "/api/v1/contact", None, {"id": 2**64, "externalCustomerId": "N-1"}),
        ("POST", "/api/v1/contact", None, {"contactId": "9" * 30}),
        ("GET", "/api/v1/contact/\u00b2", None, None),
        ("GET", "/api/v1/contacts", {"startindex": "\u00b2"}, None),
        ("GET", "/api/v1/contact/1/events", {"after": "\u00b2.1"}, None),
    ):
        status, answer = await call(client, method, path, body, params=params)
        assert status in (400, 404), (path, status, answer)
        assert answer["error"] and answer["message"]


async def test_beacon_strings_with_nul_are_rejected_with_a_reason(client: Any) -> None:
    """An event whose text or props hold a NUL character is rejected with its reason; the others land."""
    vid = str(uuid.uuid4())
    events = [*page_views(1), {"id": "nul-1", "type": "page_view", "title": "a\u0000b"},
              {"id": "nul-2", "type": "e", "props": {"k": "x\u0000"}}]
    await beacon(client, vid, events)
    status, history = await call(client, "GET", f"/api/v1/visitor/{vid}/events")
    assert status == 200 and [e["id"] for e in history["events"]] == [events[0]["id"]]
    status, body = await call(client, "GET", "/api/v1/tracker/rejected")
    assert status == 200
    reasons = {r["event_id"]: r["reason"] for r in body["rejected"]}
    assert "NUL" in reasons["nul-1"] and "NUL" in reasons["nul-2"]
