"""Core integrity: defects found by attacking the identity and stitch paths, each pinned by a test.

Event ids across a re-link (invariant 3), erase racing a merge, the one lock order (stitch vs merge), the
worker never dropping an event on a transient error, the unique external-ID index written past the locks
(invariant 6) and merges recorded well enough to be undone (invariant 9). Real Redis and SQL, both backends.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

from tests.helpers import beacon, call, eventually, page_views
from tracker.keys import VisitorKeys


async def timeline_ids(client: Any, contact_id: int) -> list[str]:
    status, page = await call(client, "GET", f"/api/v1/contact/{contact_id}/events", params={"limit": "1000"})
    assert status == 200, page
    return [e["id"] for e in page["events"]]


async def drained(client: Any, redis_client: Any, settings: Any, vid: str) -> None:
    """Wait until the worker has emptied the visitor's partition stream (bounded)."""
    stream = VisitorKeys(vid, settings.partitions).linked_stream
    assert await eventually(lambda: redis_client.xlen(stream), lambda n: n == 0, 15) == 0


# --- invariant 3 across a re-link ---------------------------------------------------------------------


async def test_an_event_retried_after_a_shared_browser_is_relinked_stays_on_one_timeline(
        client, redis_client, settings):
    """A linked visitor's event resent after the browser passed to someone else is stored once, not twice."""
    vid = str(uuid.uuid4())
    await beacon(client, vid, page_views(1, prefix="anon"))
    status, ann = await call(client, "POST", "/api/v1/contact/subscribe",
                             {"contact": {"externalCustomerId": "RL-A", "visitorIds": [vid]}})
    assert status == 200, ann
    linked = page_views(1, start=5, prefix="linked")
    await beacon(client, vid, linked)
    await drained(client, redis_client, settings, vid)
    status, bob = await call(client, "POST", "/api/v1/contact/subscribe",
                             {"contact": {"externalCustomerId": "RL-B", "visitorIds": [vid]}})
    assert status == 200 and bob["id"] != ann["id"], bob
    await beacon(client, vid, linked)  # the browser retries the same event (no 2xx seen, say)
    fresh = page_views(1, start=9, prefix="fresh")
    await beacon(client, vid, fresh)
    await drained(client, redis_client, settings, vid)
    on_ann, on_bob = Counter(await timeline_ids(client, ann["id"])), Counter(await timeline_ids(client, bob["id"]))
    assert on_ann[linked[0]["id"]] + on_bob[linked[0]["id"]] == 1, (on_ann, on_bob)
    assert on_ann[linked[0]["id"]] == 1
    assert list(on_bob) == [fresh[0]["id"]]


async def test_one_event_id_twice_in_a_linked_visitors_batch_is_stored_once(client, redis_client, settings):
    """The same id twice in one beacon of a linked visitor counts once."""
    vid = str(uuid.uuid4())
    status, ann = await call(client, "POST", "/api/v1/contact/subscribe",
                             {"contact": {"externalCustomerId": "RL-C", "visitorIds": [vid]}})
    assert status == 200, ann
    (event,) = page_views(1, prefix="twice")
    await beacon(client, vid, [event, event])
    await drained(client, redis_client, settings, vid)
    assert await timeline_ids(client, ann["id"]) == [event["id"]]


# --- subscribe is repeat-safe with a push token only (SPEC §3) ---------------------------------------


async def test_repeating_a_token_only_subscribe_finds_its_contact(client):
    """The same token-only subscribe twice is one contact; a later registration with an ID takes it over."""
    body = {"contact": {"channels": [{"type": "mobilepush", "value": "app-token-77"}]}, "groups": ["app"]}
    status, first = await call(client, "POST", "/api/v1/contact/subscribe", body)
    assert status == 200 and first["status"] == "created", first
    status, again = await call(client, "POST", "/api/v1/contact/subscribe", body)
    assert status == 200 and again["id"] == first["id"] and again["status"] == "updated", again
    status, found = await call(client, "GET", "/api/v1/contacts", params={"maxrows": "10"})
    assert [c["id"] for c in found] == [first["id"]]
    status, known = await call(client, "POST", "/api/v1/contact/subscribe", {"contact": {
        "externalCustomerId": "APP-1", "channels": [{"type": "email", "value": "app@example.com"},
                                                    {"type": "mobilepush", "value": "app-token-77"}]}})
    assert status == 200 and known["id"] == first["id"] and known["externalCustomerId"] == "APP-1", known
