"""Concurrency: identity work under parallel requests (DESIGN invariant 6) and beacons racing a stitch (4).

Run on SQLite (a write lock serialises identity work) and on PostgreSQL (advisory locks per identifier) by
setting ``TEST_DATABASE_URL``; the assertions are the same.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import time
import uuid
from collections import Counter
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

import stitcher.app
from stitcher.api import CONTACTS
from stitcher.http_input import DB
from tests.conftest import auth
from tests.helpers import eventually, identity_lock_waiters, now_ms, recent_page_views, sql_scalar
from tracker.keys import VisitorKeys
from tracker.settings import Settings

CONCURRENT = 32
DRAIN_TIMEOUT_S = 15.0
Client = TestClient  # type: ignore[type-arg]
T = TypeVar("T")


# --- helpers ------------------------------------------------------------------------------------------


async def send_beacon(client: Client, vid: str, events: list[dict[str, Any]]) -> int:
    """POST one beacon for ``vid``; the jar is emptied first so the body's vid, not a cookie, decides."""
    client.session.cookie_jar.clear()
    r = await client.post("/t", json={"vid": vid, "sent_at": now_ms(), "events": events})
    await r.read()
    if r.status == 204:
        assert r.headers["X-Stitcher-Visitor"] == vid
    return r.status


async def subscribe(client: Client, contact: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    r = await client.post("/api/v1/contact/subscribe", headers=auth(),
                          json={"contact": contact, "groups": ["newsletter"], "formType": "popup"})
    return r.status, await r.json()


async def timeline(client: Client, contact_id: int) -> list[dict[str, Any]]:
    """The whole stitched timeline of a contact, following the ``next`` cursor (bounded)."""
    events: list[dict[str, Any]] = []
    after = None
    for _ in range(100):
        params = {"limit": "1000", **({"after": after} if after else {})}
        r = await client.get(f"/api/v1/contact/{contact_id}/events", headers=auth(), params=params)
        body = await r.json()
        assert r.status == 200, body
        events += body["events"]
        after = body["next"]
        if after is None:
            return events
    raise AssertionError("timeline pagination did not end")


async def wait_drained(client: Client, redis_client: Redis, vid: str, contact_id: int,
                       expected: int) -> list[dict[str, Any]]:
    """Wait (bounded) until the worker emptied the visitor's partition stream and the timeline holds
    ``expected`` events; returns the timeline."""
    stream = VisitorKeys(vid, Settings.partitions).linked_stream
    await eventually(lambda: redis_client.xlen(stream), lambda n: n == 0, DRAIN_TIMEOUT_S)
    return await eventually(lambda: timeline(client, contact_id), lambda events: len(events) >= expected,
                            DRAIN_TIMEOUT_S)


# --- one contact under 32 concurrent subscribes -------------------------------------------------------


async def _visitors_with_history(client: Client, n: int, per_visitor: int) -> dict[str, list[str]]:
    histories: dict[str, list[str]] = {}
    for i in range(n):
        vid = str(uuid.uuid4())
        events = recent_page_views(per_visitor, f"v{i}")
        assert await send_beacon(client, vid, events) == 204
        histories[vid] = [e["id"] for e in events]
    return histories


async def _assert_one_contact_with_all_histories(client: Client, database_url: str,
                                                 results: list[tuple[int, dict[str, Any]]],
                                                 histories: dict[str, list[str]]) -> int:
    assert [status for status, _ in results] == [200] * CONCURRENT, [b for s, b in results if s != 200][:3]
    ids = {body["id"] for _, body in results}
    assert len(ids) == 1, f"{len(ids)} different contacts answered: {sorted(ids)}"
    (cid,) = ids
    assert Counter(body["status"] for _, body in results) == {"created": 1, "updated": CONCURRENT - 1}
    assert await sql_scalar(database_url, "SELECT count(*) FROM contacts") == 1

    r = await client.get(f"/api/v1/contact/{cid}", headers=auth())
    contact = await r.json()
    assert sorted(contact["visitorIds"]) == sorted(histories)
    assert [g["name"] for g in contact["groups"]] == ["newsletter"]

    # SPEC §3: when subscribe answers, the visitor's history is already on the timeline — no waiting
    events = await timeline(client, cid)
    seen = Counter(e["id"] for e in events)
    expected = {eid for ids_ in histories.values() for eid in ids_}
    assert set(seen) == expected
    assert max(seen.values()) == 1, [eid for eid, n in seen.items() if n > 1]
    owner = {eid: vid for vid, ids_ in histories.items() for eid in ids_}
    assert all(e["visitorId"] == owner[e["id"]] and e["source"] == "web" for e in events)
    return int(cid)


async def test_concurrent_subscribes_with_one_new_external_id_make_one_contact(client, database_url):
    """32 simultaneous subscribes of one new external ID create one contact holding all 32 visitors' history."""
    histories = await _visitors_with_history(client, CONCURRENT, per_visitor=3)
    ext = f"C-{uuid.uuid4().hex[:10]}"
    results = await asyncio.gather(*[
        subscribe(client, {"externalCustomerId": ext, "channels": [{"type": "email", "value": "Race@Example.com"}],
                           "visitorIds": [vid]})
        for vid in histories])

    cid = await _assert_one_contact_with_all_histories(client, database_url, list(results), histories)

    r = await client.get("/api/v1/contacts", headers=auth(), params={"externalCustomerId": ext})
    found = await r.json()
    assert r.status == 200 and r.headers["TotalCount"] == "1"
    assert [c["id"] for c in found] == [cid] and found[0]["externalCustomerId"] == ext
    assert await sql_scalar(database_url, "SELECT count(*) FROM identifiers WHERE kind = 'email'") == 1


async def test_concurrent_subscribes_with_one_new_email_make_one_contact(client, database_url):
    """32 simultaneous subscribes of one new email (no external ID) create one contact, not 32."""
    histories = await _visitors_with_history(client, CONCURRENT, per_visitor=2)
    results = await asyncio.gather(*[
        subscribe(client, {"channels": [{"type": "email", "value": " Solo.Race@Example.com "}], "visitorIds": [vid]})
        for vid in histories])

    cid = await _assert_one_contact_with_all_histories(client, database_url, list(results), histories)

    r = await client.get("/api/v1/contacts", headers=auth(), params={"email": "solo.race@example.com"})
    found = await r.json()
    assert r.status == 200 and r.headers["TotalCount"] == "1"
    assert [c["id"] for c in found] == [cid] and found[0]["externalCustomerId"] is None


# --- beacons racing a stitch --------------------------------------------------------------------------


async def _beacons_during_stitch(aiohttp_client: Any, settings: Settings, redis_client: Redis,
                                 database_url: str, pause_ms: int) -> dict[str, Any]:
    """Fire 300 beacons for one visitor while it subscribes a third of the way in, and 10 more after the
    subscribe answered if it was still running at the 300th; return what happened."""
    client = await aiohttp_client(stitcher.app.init_app(dataclasses.replace(settings, stitch_pause_ms=pause_ms)))
    vid = str(uuid.uuid4())
    sent: list[str] = []
    statuses: list[int] = []
    beacon_done_at: list[float] = []
    third = asyncio.Event()
    answered = asyncio.Event()

    async def beacons() -> None:
        # on a loaded machine the subscribe may take longer than the 200 beacons after it: the beacons go on,
        # so that some always follow the claim (the race this is about), whatever the machine's speed
        i = after = 0
        while i < 300 or after < 10:
            events = recent_page_views(1 + i % 3, f"b{i}")
            statuses.append(await send_beacon(client, vid, events))
            beacon_done_at.append(time.monotonic())
            sent.extend(e["id"] for e in events)
            if i == 100:
                third.set()
            i += 1
            after += int(answered.is_set())

    async def subscriber() -> tuple[int, dict[str, Any], float, float]:
        await asyncio.wait_for(third.wait(), 60)
        before = len(sent)
        started = time.monotonic()
        try:
            status, body = await subscribe(client, {"externalCustomerId": "C-race-beacons",
                                                    "channels": [{"type": "email", "value": "b@example.com"}],
                                                    "visitorIds": [vid]})
        finally:
            answered.set()
        assert before <= body.get("stitchedEvents", before)
        return status, body, started, time.monotonic()

    _, (status, body, sub_started, sub_ended) = await asyncio.wait_for(
        asyncio.gather(beacons(), subscriber()), 90)
    assert status == 200, body
    assert len(statuses) >= 300 and statuses == [204] * len(statuses)
    cid = body["id"]

    events = await wait_drained(client, redis_client, vid, cid, len(sent))
    seen = Counter(e["id"] for e in events)
    lost = set(sent) - set(seen)
    assert not lost, f"{len(lost)} of {len(sent)} accepted events never reached the timeline"
    assert set(seen) == set(sent)
    assert max(seen.values()) == 1, [eid for eid, n in seen.items() if n > 1]
    assert await sql_scalar(database_url, "SELECT count(*) FROM timeline WHERE contact_id = :c", c=cid) == len(sent)

    keys = VisitorKeys(vid, settings.partitions)
    assert not await redis_client.keys(keys.claim_pattern)
    assert not await redis_client.exists(keys.events)
    assert int(await redis_client.get(keys.link)) == cid
    return {"sent": len(sent), "stitched": body["stitchedEvents"],
            "during": sum(sub_started < t < sub_ended for t in beacon_done_at)}


async def test_beacons_during_a_paused_stitch_land_exactly_once(aiohttp_client, settings, redis_client,
                                                                database_url):
    """Beacons arriving while a stitch is held between claim and insert all reach the timeline exactly once."""
    seen = await _beacons_during_stitch(aiohttp_client, settings, redis_client, database_url, pause_ms=200)
    # the race was real: part of the history went through the claim, and beacons landed during the stitch
    # and went through the linked stream instead
    assert 0 < seen["stitched"] < seen["sent"]
    assert seen["during"] > 0


async def test_beacons_during_a_stitch_land_exactly_once(aiohttp_client, settings, redis_client, database_url):
    """Beacons racing an ordinary (unpaused) stitch all reach the timeline exactly once."""
    seen = await _beacons_during_stitch(aiohttp_client, settings, redis_client, database_url, pause_ms=0)
    assert 0 < seen["stitched"] < seen["sent"]


@pytest.mark.parametrize("pause_ms", [0, 200])
async def test_concurrent_resubscribes_of_one_visitor_stitch_once(aiohttp_client, settings, redis_client,
                                                                  database_url, pause_ms):
    """The same subscribe retried 8 times at once (one visitor) puts each event on the timeline once."""
    client = await aiohttp_client(stitcher.app.init_app(dataclasses.replace(settings, stitch_pause_ms=pause_ms)))
    vid = str(uuid.uuid4())
    events = recent_page_views(40, "retry")
    assert await send_beacon(client, vid, events) == 204
    contact = {"externalCustomerId": "C-retry", "channels": [{"type": "email", "value": "r@example.com"}],
               "visitorIds": [vid]}

    async def subscribe_then_read() -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
        status, body = await subscribe(client, contact)
        # read as soon as this call answers: its history must already be there, whoever did the work
        return status, body, (await timeline(client, body["id"]) if status == 200 else [])

    results = await asyncio.wait_for(asyncio.gather(*[subscribe_then_read() for _ in range(8)]), 60)
    assert [s for s, _, _ in results] == [200] * 8, [b for s, b, _ in results if s != 200][:2]
    assert len({b["id"] for _, b, _ in results}) == 1
    expected = Counter(e["id"] for e in events)
    for _, _, seen in results:
        assert Counter(e["id"] for e in seen) == expected
    assert not await redis_client.keys(VisitorKeys(vid, settings.partitions).claim_pattern)


async def test_sweeper_does_not_take_back_a_visitor_that_changed_hands(aiohttp_client, settings, redis_client,
                                                                      database_url):
    """A visitor re-linked to a new person while the sweeper finishes old stitches keeps going to the new one."""
    client = await aiohttp_client(stitcher.app.init_app(dataclasses.replace(settings, stitch_pause_ms=200)))
    # eight unfinished stitches of other visitors keep the sweeper busy (~200 ms each) before it reaches V's,
    # long after the new person's subscribe (~0.5 s) has re-linked V
    vids = [str(uuid.uuid4()) for _ in range(9)]
    shared = vids[-1]
    contacts = []
    for i, vid in enumerate(vids):
        assert await send_beacon(client, vid, recent_page_views(2, f"s{i}")) == 204
        status, body = await subscribe(client, {"externalCustomerId": f"C-sweep-{i}", "visitorIds": [vid]})
        assert status == 200, body
        contacts.append(body["id"])
    first_owner = contacts[-1]
    engine = create_async_engine(database_url)
    try:
        for vid in vids:  # a crash before each stitch was marked finished, oldest first
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE visitor_links SET stitched_at = NULL WHERE visitor_id = :v"),
                                   {"v": vid})
    finally:
        await engine.dispose()

    sweeper = asyncio.create_task(client.app[stitcher.app.WORKER].housekeeping(first=True))
    try:
        await asyncio.sleep(0.05)
        # the shared computer: someone else signs in on V while the sweeper works
        status, body = await subscribe(client, {"externalCustomerId": "C-sweep-new", "visitorIds": [shared]})
        assert status == 200, body
        new_owner = body["id"]
        assert new_owner != first_owner
    finally:
        await asyncio.wait_for(sweeper, 30)

    link = VisitorKeys(shared, settings.partitions).link
    assert int(await redis_client.get(link)) == new_owner, "the sweeper re-linked V to its previous person"
    later = recent_page_views(2, "later")
    assert await send_beacon(client, shared, later) == 204
    events = await wait_drained(client, redis_client, shared, new_owner, len(later))
    # what V did before stays with its first person; what it does now goes to the new one
    assert [e["id"] for e in events] == [e["id"] for e in later]
    assert not {e["id"] for e in later} & {e["id"] for e in await timeline(client, first_owner)}


@pytest.mark.parametrize("order", ["relink_before_first_stitch", "relink_during_first_stitch"])
async def test_two_people_subscribing_at_once_on_one_browser_keep_its_history_with_the_first(
        aiohttp_client, settings, redis_client, database_url, monkeypatch, order):
    """Two people subscribing at once on one browser: its earlier history stays with the first one linked."""
    client = await aiohttp_client(stitcher.app.init_app(dataclasses.replace(settings, stitch_pause_ms=2000)))
    db = client.app[DB]
    service = client.app[CONTACTS]
    vid = str(uuid.uuid4())
    keys = VisitorKeys(vid, settings.partitions)
    before = recent_page_views(6, "shared")
    assert await send_beacon(client, vid, before) == 204

    # who handed the browser's history to whom: a stitch, or the re-link of a browser whose stitch had not run
    in_stitch: contextvars.ContextVar[bool] = contextvars.ContextVar("in_stitch", default=False)
    claims: list[tuple[str, int]] = []
    real_stitch, real_claim = service.stitcher.stitch, service.eventlog.claim
    assert service.stitcher.eventlog is service.eventlog

    async def stitch(v: str, contact_id: int) -> int:
        token = in_stitch.set(True)
        try:
            return await real_stitch(v, contact_id)
        finally:
            in_stitch.reset(token)

    async def claim(v: str, contact_id: int) -> int:
        claims.append(("stitch" if in_stitch.get() else "re-link", contact_id))
        return await real_claim(v, contact_id)

    monkeypatch.setattr(service.stitcher, "stitch", stitch)
    monkeypatch.setattr(service.eventlog, "claim", claim)

    async def subscribe_then_read(ext: str) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
        status, body = await subscribe(client, {"externalCustomerId": ext, "visitorIds": [vid]})
        # read as soon as this call answers: its history must already be there (SPEC §3)
        return status, body, (await timeline(client, body["id"]) if status == 200 else [])

    # Both calls wait on the browser's identity lock, Ann's first. Either Bob's re-link takes the lock after
    # Ann's link committed but before Ann's stitch could run (Bob finds Ann's stitch not done), or Bob arrives
    # while Ann's stitch holds the history in her claim (paused between claim and insert) and waits for it.
    release = asyncio.Event()
    held = asyncio.Event()

    async def gate() -> None:
        async with db.transaction() as s:
            await db.lock_keys(s, [f"vid:{vid}"])
            held.set()
            await release.wait()

    tasks = [asyncio.create_task(gate())]
    try:
        await asyncio.wait_for(held.wait(), 10)
        ann = asyncio.create_task(subscribe_then_read("C-ann"))
        tasks.append(ann)
        await identity_lock_waiters(db, database_url, 1)
        if order == "relink_before_first_stitch":
            bob = asyncio.create_task(subscribe_then_read("C-bob"))
            tasks.append(bob)
            await identity_lock_waiters(db, database_url, 2)
            service.stitcher.pause_ms = 0
            release.set()
        else:
            release.set()
            assert await eventually(lambda: redis_client.keys(keys.claim_pattern), bool, 10)
            bob = asyncio.create_task(subscribe_then_read("C-bob"))
            tasks.append(bob)
            await identity_lock_waiters(db, database_url, 1)
            assert await redis_client.keys(keys.claim_pattern), "Ann's stitch ended before Bob's call queued"
            service.stitcher.pause_ms = 0  # Bob's stitches run unpaused once Ann's ends
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        release.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    (ann_status, ann_body, ann_seen), (bob_status, bob_body, bob_seen) = ann.result(), bob.result()
    assert (ann_status, bob_status) == (200, 200), (ann_body, bob_body)
    ann_id, bob_id = ann_body["id"], bob_body["id"]
    assert ann_id != bob_id
    # the interleaving really happened
    first = "re-link" if order == "relink_before_first_stitch" else "stitch"
    assert claims == [(first, ann_id), ("stitch", bob_id)]

    r = await client.get(f"/api/v1/contact/{bob_id}", headers=auth())
    assert (await r.json())["visitorIds"] == [vid]  # Bob holds the browser now
    assert int(await redis_client.get(keys.link)) == bob_id
    assert not await redis_client.keys(keys.claim_pattern)
    assert not await redis_client.exists(keys.events)

    anonymous = Counter(e["id"] for e in before)
    assert Counter(e["id"] for e in ann_seen) == anonymous, "Ann's subscribe answered before her history was in"
    assert not bob_seen
    on_ann = Counter(e["id"] for e in await timeline(client, ann_id))
    on_bob = Counter(e["id"] for e in await timeline(client, bob_id))
    assert on_ann + on_bob == anonymous, "the browser's earlier history was copied onto both people"
    assert on_ann == anonymous, f"Ann has {sum(on_ann.values())} of {len(before)} events, Bob {sum(on_bob.values())}"

    # from now on the browser feeds Bob only
    later = recent_page_views(2, "later")
    assert await send_beacon(client, vid, later) == 204
    events = await wait_drained(client, redis_client, vid, bob_id, len(later))
    assert [e["id"] for e in events] == [e["id"] for e in later]
    assert Counter(e["id"] for e in await timeline(client, ann_id)) == anonymous
