"""Core integrity: defects found by attacking the identity and stitch paths, each pinned by a test.

Event ids across a re-link (invariant 3), erase racing a merge, the one lock order (stitch vs merge), the
worker never dropping an event on a transient error, the unique external-ID index written past the locks
(invariant 6) and merges recorded well enough to be undone (invariant 9). Real Redis and SQL, both backends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import Counter
from typing import Any

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

import stitcher.app
from stitcher.api import CONTACTS
from stitcher.app import WORKER
from stitcher.http_input import DB
from stitcher.stitch import Stitcher
from stitcher.store import repo
from stitcher.store.db import Database
from tests.conftest import auth
from tests.helpers import (
    beacon,
    call,
    eventually,
    identity_lock_waiters,
    page_views,
    sql_scalar,
    timeline_ids,
)
from tracker.keys import VisitorKeys


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


# --- item 9: one lock order; a collision that outlives its retries is a 503 ----------------------------


def deadlock() -> DBAPIError:
    return DBAPIError("INSERT INTO timeline ...", {}, Exception("deadlock detected"))


async def test_a_stitch_and_a_merge_of_its_contact_do_not_deadlock(aiohttp_client, settings, redis_client):
    """A merge of a contact whose stitch is in flight waits for the stitch (visitor keys before contact
    rows, everywhere): both calls answer 200 and the history ends on the winner."""
    client = await aiohttp_client(stitcher.app.init_app(dataclasses.replace(settings, stitch_pause_ms=1500)))
    vid = str(uuid.uuid4())
    history = page_views(3, prefix="before")
    await beacon(client, vid, history)
    status, winner = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "DL-W"})
    assert status == 200, winner
    # the unidentified profile's stitch holds the visitor's history between claim and insert ...
    first = asyncio.create_task(call(client, "POST", "/api/v1/contact", {
        "channels": [{"type": "email", "value": "dl@example.com"}], "visitorIds": [vid]}))
    claim = VisitorKeys(vid, settings.partitions).claim_pattern
    assert await eventually(lambda: redis_client.keys(claim), bool, 10)
    # ... while the identified person's call folds that profile in
    second = asyncio.create_task(call(client, "POST", "/api/v1/contact", {
        "externalCustomerId": "DL-W", "channels": [{"type": "email", "value": "dl@example.com"}]}))
    (s1, profile), (s2, merged) = await asyncio.wait_for(asyncio.gather(first, second), 30)
    assert (s1, s2) == (200, 200), (profile, merged)
    assert profile["stitchedEvents"] == 3, profile
    assert merged["id"] == winner["id"] and merged["mergedContactIds"] == [profile["id"]], merged
    assert Counter(await timeline_ids(client, winner["id"])) == Counter(e["id"] for e in history)


async def test_a_collision_that_outlives_its_retries_answers_503_and_a_retry_finishes(client, monkeypatch):
    """A deadlock on every try of the stitch is a 503 with Retry-After, never a 500; the same call repeated
    later finishes the job, once."""
    service = client.app[CONTACTS]
    vid = str(uuid.uuid4())
    history = page_views(2, prefix="busy")
    await beacon(client, vid, history)
    real = service.stitcher._stitch_once
    tries = 0

    async def always_deadlocked(v: str, c: int) -> int:
        nonlocal tries
        tries += 1
        raise deadlock()

    monkeypatch.setattr(service.stitcher, "_stitch_once", always_deadlocked)
    body = {"externalCustomerId": "BUSY-1", "visitorIds": [vid]}
    r = await client.post("/api/v1/contact", json=body, headers=auth())
    answer = await r.json()
    assert r.status == 503 and answer["error"] == "unavailable", answer
    assert r.headers["Retry-After"] == "1"
    assert tries == 5
    monkeypatch.setattr(service.stitcher, "_stitch_once", real)
    status, again = await call(client, "POST", "/api/v1/contact", body)
    assert status == 200 and again["stitchedEvents"] == 2, again
    assert Counter(await timeline_ids(client, again["id"])) == Counter(e["id"] for e in history)


# --- item 8: erase racing a merge into the same contact -------------------------------------------------


async def person_rows(database_url: str, contact_ids: list[int]) -> dict[str, int]:
    engine = create_async_engine(database_url)
    out: dict[str, int] = {}
    try:
        async with engine.connect() as conn:
            for table, column in (("contacts", "id"), ("identifiers", "contact_id"), ("timeline", "contact_id"),
                                  ("visitor_links", "contact_id"), ("group_members", "contact_id")):
                out[table] = (await conn.execute(text(f"SELECT count(*) FROM {table} WHERE {column} IN "
                                                      f"({','.join(map(str, contact_ids))})"))).scalar_one()
            out["audit"] = (await conn.execute(text(
                "SELECT count(*) FROM identity_log WHERE action != 'erased' AND contact_id IN "
                f"({','.join(map(str, contact_ids))})"))).scalar_one()
    finally:
        await engine.dispose()
    return out


@pytest.mark.parametrize("first", ["merge", "erase"])
async def test_erase_racing_a_merge_into_the_contact_leaves_nothing_of_the_person(
        client, database_url, redis_client, settings, monkeypatch, first):
    """Erase and a merge into the same contact at once: whichever goes first, nothing of the person survives
    the erase (no resurrected profile, no audit entries, no Redis link) and neither call answers 500."""
    vid_a, vid_p = str(uuid.uuid4()), str(uuid.uuid4())
    await beacon(client, vid_a, page_views(1, prefix="a"))
    await beacon(client, vid_p, page_views(2, prefix="p"))
    status, ann = await call(client, "POST", "/api/v1/contact", {
        "externalCustomerId": "ER-A", "channels": [{"type": "email", "value": "er-a@example.com"}],
        "visitorIds": [vid_a]})
    assert status == 200, ann
    status, profile = await call(client, "POST", "/api/v1/contact", {
        "channels": [{"type": "sms", "value": "+380671110022"}], "visitorIds": [vid_p]})
    assert status == 200 and profile["id"] != ann["id"], profile

    held, release = asyncio.Event(), asyncio.Event()

    def holding(real: Any) -> Any:
        async def paused(*args: Any) -> Any:
            held.set()
            await release.wait()
            return await real(*args)
        return paused

    def merge_call() -> Any:
        return asyncio.create_task(call(client, "POST", "/api/v1/contact", {
            "externalCustomerId": "ER-A", "channels": [{"type": "sms", "value": "+380671110022"}]}))

    def erase_call() -> Any:
        return asyncio.create_task(call(client, "DELETE", f"/api/v1/contact/{ann['id']}", params={"erase": "true"}))

    # the first call pauses while it holds its locks (the merge between row locks and moving rows; the
    # erase after deleting, before its commit); the second then runs into them
    if first == "merge":
        monkeypatch.setattr(repo, "merge_into", holding(repo.merge_into))
        merge = merge_call()
        await asyncio.wait_for(held.wait(), 10)
        erase = erase_call()
    else:
        eventlog = client.app[CONTACTS].eventlog
        monkeypatch.setattr(eventlog, "forget", holding(eventlog.forget))
        erase = erase_call()
        await asyncio.wait_for(held.wait(), 10)
        merge = merge_call()
    await identity_lock_waiters(client.app[DB], database_url, 1)  # the second call queues on the first's locks
    release.set()
    (merge_status, merged), (erase_status, erased) = await asyncio.wait_for(asyncio.gather(merge, erase), 30)
    assert erase_status == 200, erased
    assert merge_status == 200, merged

    if first == "merge":
        # the merge finished first: the profile was folded into Ann, so it went with her
        assert merged["mergedContactIds"] == [profile["id"]], merged
        gone = [ann["id"], profile["id"]]
        assert merged["id"] == ann["id"]
    else:
        # the erase finished first: the same ID then names the unidentified profile, a new person
        assert merged["id"] == profile["id"] and merged["status"] == "updated", merged
        gone = [ann["id"]]
    assert await person_rows(database_url, gone) == {"contacts": 0, "identifiers": 0, "timeline": 0,
                                                     "visitor_links": 0, "group_members": 0, "audit": 0}
    for cid in gone:
        status, err = await call(client, "GET", f"/api/v1/contact/{cid}")
        assert status == 404, err
    dead = [vid_a, vid_p] if first == "merge" else [vid_a]
    for vid in dead:
        k = VisitorKeys(vid, settings.partitions)
        assert not await redis_client.exists(k.link, k.events, k.ids), vid
        assert not await redis_client.keys(k.claim_pattern)
    # a later beacon of an erased person's browser is anonymous again, not silently dropped
    later = page_views(1, start=50, prefix="later")
    await beacon(client, vid_a, later)
    status, history = await call(client, "GET", f"/api/v1/visitor/{vid_a}/events")
    assert status == 200 and history["linkedContactId"] is None
    assert [e["id"] for e in history["events"]] == [later[0]["id"]]


async def test_erase_removes_the_persons_rejected_beacon_events(client):
    """An erase also deletes the rejected beacon events of the person's browsers, and only theirs."""
    vid, other = str(uuid.uuid4()), str(uuid.uuid4())
    bad = {"id": "bad-1", "type": "", "ts": 1_800_000_000_000}
    for v in (vid, other):
        client.session.cookie_jar.clear()
        r = await client.post("/t", data=orjson.dumps({"vid": v, "events": [bad, *page_views(1)]}),
                              headers={"Content-Type": "text/plain"})
        assert r.status == 204
    status, rejected = await call(client, "GET", "/api/v1/tracker/rejected")
    assert {e["vid"] for e in rejected["rejected"]} == {vid, other}, rejected
    status, person = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "RJ-1",
                                                                    "visitorIds": [vid]})
    status, _ = await call(client, "DELETE", f"/api/v1/contact/{person['id']}", params={"erase": "true"})
    assert status == 200
    status, rejected = await call(client, "GET", "/api/v1/tracker/rejected")
    assert [e["vid"] for e in rejected["rejected"]] == [other], rejected


# --- the worker never drops an event on a transient error ----------------------------------------------


async def test_the_worker_keeps_an_event_through_transient_errors(client, redis_client, settings, monkeypatch):
    """A deadlock or a refused connection while draining leaves the event pending; it lands once the
    database is back, and nothing is recorded as rejected."""
    worker = client.app[WORKER]
    real = worker._insert
    failures = iter([deadlock(), deadlock(), DBAPIError("connect", {}, ConnectionRefusedError("refused")),
                     deadlock()])

    async def flaky(events: Any) -> None:
        exc = next(failures, None)
        if exc is not None:
            raise exc
        await real(events)

    monkeypatch.setattr(worker, "_insert", flaky)
    vid = str(uuid.uuid4())
    status, person = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "WK-1",
                                                                    "visitorIds": [vid]})
    assert status == 200, person
    later = page_views(1, prefix="later")
    await beacon(client, vid, later)
    ids = await eventually(lambda: timeline_ids(client, person["id"]), bool, 15)
    assert ids == [later[0]["id"]]
    status, rejected = await call(client, "GET", "/api/v1/tracker/rejected")
    assert rejected["rejected"] == []


async def test_an_event_the_database_refuses_is_rejected_with_its_json(client, redis_client, settings,
                                                                       monkeypatch):
    """An event that fails alone because of its own content is set aside with its JSON and reason, and the
    rest of its batch lands."""
    worker = client.app[WORKER]
    real = worker._insert

    async def picky(events: Any) -> None:
        if any(e.event["id"].startswith("poison") for e in events):
            raise ValueError("cannot store this value")
        await real(events)

    monkeypatch.setattr(worker, "_insert", picky)
    vid = str(uuid.uuid4())
    status, person = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "WK-2",
                                                                    "visitorIds": [vid]})
    good, poison = page_views(1, prefix="good"), page_views(1, start=3, prefix="poison")
    await beacon(client, vid, [*good, *poison])
    await drained(client, redis_client, settings, vid)
    assert await timeline_ids(client, person["id"]) == [good[0]["id"]]
    status, rejected = await call(client, "GET", "/api/v1/tracker/rejected")
    assert status == 200
    (entry,) = rejected["rejected"]
    assert entry["vid"] == vid and entry["event_id"] == poison[0]["id"] and "ValueError" in entry["reason"]
    assert orjson.loads(entry["event"])["url"] == poison[0]["url"]


# --- a re-link: no later beacon reaches the previous owner, their claim outlives failures -------------


async def test_beacons_after_a_relink_reach_the_new_owner_even_before_its_stitch_runs(client, database_url,
                                                                                     monkeypatch):
    """Once a shared browser's re-link is committed, its beacons go to the new person, even while Redis
    still names the earlier one (the re-link's stitch failed: 503); the earlier person keeps the past."""
    vid = str(uuid.uuid4())
    status, ann = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "RL-ANN",
                                                                 "visitorIds": [vid]})
    before = page_views(1, prefix="ann")
    await beacon(client, vid, before)
    await eventually(lambda: timeline_ids(client, ann["id"]), bool, 15)
    service = client.app[CONTACTS]
    real = service.stitcher._stitch_once

    async def broken(v: str, c: int) -> int:
        raise deadlock()

    monkeypatch.setattr(service.stitcher, "_stitch_once", broken)
    status, failed = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "RL-BOB",
                                                                    "visitorIds": [vid]})
    assert status == 503, failed
    monkeypatch.setattr(service.stitcher, "_stitch_once", real)
    bob_id = await sql_scalar(database_url, "SELECT id FROM contacts WHERE external_customer_id = 'RL-BOB'")
    after = page_views(1, start=10, prefix="bob")
    await beacon(client, vid, after)  # Redis still links the browser to Ann
    assert await eventually(lambda: timeline_ids(client, bob_id), bool, 15) == [after[0]["id"]]
    assert await timeline_ids(client, ann["id"]) == [before[0]["id"]]


async def test_an_earlier_owners_unfinished_claim_is_kept_alive_by_each_try(client, redis_client, settings,
                                                                           monkeypatch):
    """Each try of the earlier owner's failing stitch renews its claim's TTL, so days of failures lose nothing."""
    vid = str(uuid.uuid4())
    service = client.app[CONTACTS]
    status, ann = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "TTL-A"})
    status, bob = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "TTL-B",
                                                                 "visitorIds": [vid]})
    assert status == 200, bob
    k = VisitorKeys(vid, settings.partitions)
    (event,) = page_views(1, prefix="claimed")
    # what a re-link leaves when the earlier owner's stitch has not run: her claim, almost expired
    await redis_client.rpush(k.claim(ann["id"]), orjson.dumps({**event, "t": event["ts"], "rt": event["ts"]}))
    await redis_client.expire(k.claim(ann["id"]), 5)

    async def down(*args: Any) -> None:
        raise DBAPIError("INSERT", {}, Exception("could not serialize access due to concurrent update"))

    monkeypatch.setattr("stitcher.stitch.insert_timeline", down)
    with pytest.raises(Exception, match="serialize"):
        await service.stitcher.stitch(vid, ann["id"])
    assert await redis_client.ttl(k.claim(ann["id"])) > 6 * 86_400
    monkeypatch.undo()
    assert await service.stitcher.stitch(vid, ann["id"]) == 1
    assert await timeline_ids(client, ann["id"]) == [event["id"]]
    assert await timeline_ids(client, bob["id"]) == []


async def test_a_crash_after_the_earlier_owners_claim_inside_a_relink_loses_nothing(client, monkeypatch):
    """Invariant 5 across a re-link: a failure right after the earlier owner's history was claimed, before
    the re-link commits, leaves a state the sweeper or the retried call finishes, every event once."""
    vid = str(uuid.uuid4())
    service = client.app[CONTACTS]
    history = page_views(3, prefix="anon")
    await beacon(client, vid, history)
    # Ann's link commits, but her stitch never ran (a crash between the commit and the stitch)
    monkeypatch.setattr(service.stitcher, "stitch", _never)
    status, ann = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "CR-ANN",
                                                                 "visitorIds": [vid]})
    assert status == 503, ann
    monkeypatch.undo()
    real_audit = repo.audit

    def crash_after_claim(s: Any, cid: int, action: str, *args: Any, **kw: Any) -> None:
        if action == "unlinked_visitor":
            raise ConnectionResetError("the process died here")
        real_audit(s, cid, action, *args, **kw)

    monkeypatch.setattr(repo, "audit", crash_after_claim)
    status, failed = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "CR-BOB",
                                                                    "visitorIds": [vid]})
    assert status == 503, failed
    monkeypatch.undo()
    assert await service.stitcher.finish_pending() >= 1  # the sweeper
    ann_id = (await call(client, "GET", "/api/v1/contacts", params={"externalCustomerId": "CR-ANN"}))[1][0]["id"]
    assert Counter(await timeline_ids(client, ann_id)) == Counter(e["id"] for e in history)
    status, bob = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "CR-BOB",
                                                                 "visitorIds": [vid]})
    assert status == 200 and bob["stitchedEvents"] == 0, bob
    assert Counter(await timeline_ids(client, ann_id)) == Counter(e["id"] for e in history)


async def _never(vid: str, contact_id: int) -> int:
    raise ConnectionResetError("the process died before the stitch")


# --- invariant 6: the unique index, written past the locks ----------------------------------------------


async def test_the_database_refuses_a_second_live_contact_with_one_external_id(database_url):
    """The unique index itself refuses two rows with one external ID, whatever the service's locks do."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO contacts (external_customer_id, created_at, updated_at) "
                                    "VALUES ('U-1', 1, 1)"))
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO contacts (external_customer_id, created_at, updated_at) "
                                        "VALUES ('U-1', 2, 2)"))
    finally:
        await engine.dispose()


async def test_concurrent_creators_past_the_locks_still_make_one_contact(aiohttp_client, settings, database_url,
                                                                         monkeypatch):
    """With the identity locks switched off, and two service processes (two engines) writing at once, one
    external ID still ends as one contact: the unique index refuses the second and the retry finds the first."""

    async def no_locks(self: Any, session: Any, keys: Any) -> None:
        return None

    monkeypatch.setattr(Database, "lock_keys", no_locks)
    clients = [await aiohttp_client(stitcher.app.init_app(settings)) for _ in range(2)]
    for c in clients:
        c.app[DB]._write_lock = None  # SQLite: no process-wide queue either, as with two processes
    calls = [call(clients[i % 2], "POST", "/api/v1/contact", {
        "externalCustomerId": "RACE-1", "channels": [{"type": "email", "value": f"r{i}@example.com"}]})
        for i in range(16)]
    answers = await asyncio.gather(*calls)
    assert {status for status, _ in answers} == {200}, answers
    assert len({body["id"] for _, body in answers}) == 1
    assert await sql_scalar(database_url, "SELECT count(*) FROM contacts") == 1
    assert await sql_scalar(database_url, "SELECT count(*) FROM identifiers") == 16


# --- invariant 9: a merge says what moved, enough to undo it ---------------------------------------------


async def test_a_merge_records_what_moved_in_the_identity_log(client, redis_client, settings):
    """The winner's and the loser's logs name the identifiers, visitors, timeline rows and groups a merge
    moved (and what the winner already had), and each moved visitor has its unlink and link entry."""
    vid = str(uuid.uuid4())
    history = page_views(2, prefix="p")
    await beacon(client, vid, history)
    status, profile = await call(client, "POST", "/api/v1/contact/subscribe", {"contact": {
        "channels": [{"type": "email", "value": "m9@example.com"}, {"type": "mobilepush", "value": "tok-m9"}],
        "visitorIds": [vid]}, "groups": ["news", "vip"]})
    assert status == 200 and profile["stitchedEvents"] == 2, profile
    status, winner = await call(client, "POST", "/api/v1/contact/subscribe", {"contact": {
        "externalCustomerId": "M9", "channels": [{"type": "sms", "value": "+380671239999"}]}, "groups": ["vip"]})
    before = {e["id"]: e for e in (await call(client, "GET", f"/api/v1/contact/{profile['id']}/events"))[1]["events"]}
    status, merged = await call(client, "POST", "/api/v1/contact", {
        "externalCustomerId": "M9", "channels": [{"type": "sms", "value": "+380671239999"},
                                                 {"type": "email", "value": "m9@example.com"}]})
    assert status == 200 and merged["id"] == winner["id"] and merged["mergedContactIds"] == [profile["id"]]

    status, log = await call(client, "GET", f"/api/v1/contact/{winner['id']}/identity-log")
    (entry,) = [e for e in log["entries"] if e["action"] == "merged"]
    assert entry["mergedContactId"] == profile["id"]
    assert entry["identifiers"] == [
        {"kind": "email", "value": "m9@example.com", "device": None, "alreadyOnWinner": True},
        {"kind": "mobilepush", "value": "tok-m9", "device": None, "alreadyOnWinner": False}]
    assert entry["visitorIds"] == [vid]
    rows = await sql_rows(settings.database_url or "", "SELECT id FROM timeline WHERE contact_id = :c ORDER BY id",
                          c=winner["id"])
    assert entry["timelineRowIds"] == rows and len(rows) == len(before)
    assert entry["droppedDuplicateEventIds"] == []
    groups = {g["name"]: g["id"] for g in (await call(client, "GET", f"/api/v1/contact/{winner['id']}"))[1]["groups"]}
    assert sorted(entry["groups"], key=lambda g: g["id"]) == sorted(
        [{"id": groups["news"], "alreadyMember": False}, {"id": groups["vip"], "alreadyMember": True}],
        key=lambda g: g["id"])
    links = [e for e in log["entries"] if e["action"] == "linked_visitor"]
    assert links[-1] == {**links[-1], "visitorId": vid, "fromContactId": profile["id"], "reason": "merge"}

    status, loser_log = await call(client, "GET", f"/api/v1/contact/{profile['id']}/identity-log")
    actions = [e["action"] for e in loser_log["entries"]]
    assert actions[-2:] == ["merged_into", "unlinked_visitor"], actions
    assert loser_log["entries"][-1]["toContactId"] == winner["id"]
    assert loser_log["entries"][-2]["timelineRowIds"] == rows


async def sql_rows(database_url: str, query: str, **params: Any) -> list[Any]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            return [row[0] for row in await conn.execute(text(query), params)]
    finally:
        await engine.dispose()


# --- a stop waits for the worker's database work ----------------------------------------------------------


async def test_stopping_the_service_lets_the_workers_database_work_finish(aiohttp_client, settings, monkeypatch):
    """The service's shutdown waits for the worker's current SQL work (a query cut off by a cancel would
    go on running on the SQLite driver's thread after the loop has closed); only its Redis wait is abandoned."""
    entered, finished = asyncio.Event(), []
    real = Stitcher.finish_pending

    async def slow_sweep(self: Stitcher, older_than_ms: int = 0) -> int:
        entered.set()
        await asyncio.sleep(0.3)  # a slow query
        n = await real(self, older_than_ms)
        finished.append(n)
        return n

    monkeypatch.setattr(Stitcher, "finish_pending", slow_sweep)
    client = await aiohttp_client(stitcher.app.init_app(settings))
    await asyncio.wait_for(entered.wait(), 10)
    await client.close()
    assert finished == [0]
