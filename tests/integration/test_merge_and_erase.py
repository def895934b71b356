"""Merge policy, soft delete / restore, erase and the identity log (SPEC §1, §3; DESIGN merge policy, inv. 6, 9).

The whole service over HTTP on real Redis and SQL; what must be gone after an erase is checked in the database
itself (through SQLAlchemy on the test's ``database_url``) and in Redis (``tracker.keys.VisitorKeys``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.helpers import SENT_AT_MS, beacon, call, page_views, search_total, timeline_ids
from tests.helpers import identity_log as actions
from tracker.keys import VisitorKeys

WORKER_DEADLINE_S = 2.0
PERSON_TABLES = ("identifiers", "timeline", "group_members", "visitor_links")



async def wait_for_timeline(client: Any, contact_id: int, event_ids: list[str]) -> list[str]:
    until = time.monotonic() + WORKER_DEADLINE_S
    while True:
        ids = await timeline_ids(client, contact_id)
        if set(event_ids) <= set(ids):
            return ids
        if time.monotonic() > until:
            raise AssertionError(f"events {sorted(set(event_ids) - set(ids))} not on contact {contact_id}'s "
                                 f"timeline after {WORKER_DEADLINE_S}s")
        await asyncio.sleep(0.05)


async def sql(database_url: str, query: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows of a query run straight on the service's database."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in await conn.execute(text(query), params)]
    finally:
        await engine.dispose()


async def rows_of(database_url: str, contact_id: int) -> dict[str, int]:
    """How many rows each table holds for one contact (``contacts`` counts the contact itself)."""
    counts = {"contacts": (await sql(database_url, "SELECT count(*) FROM contacts WHERE id = :c",
                                     c=contact_id))[0][0]}
    for table in PERSON_TABLES:
        counts[table] = (await sql(database_url, f"SELECT count(*) FROM {table} WHERE contact_id = :c",
                                   c=contact_id))[0][0]
    return counts


async def redis_keys_of(redis_client: Any, settings: Any, vid: str) -> dict[str, bool]:
    """Which of a visitor's Redis keys exist; ``claim`` is any claim of the visitor, whatever its contact."""
    k = VisitorKeys(vid, settings.partitions)
    present = {name: bool(await redis_client.exists(getattr(k, name))) for name in ("events", "ids", "link")}
    present["claim"] = bool(await redis_client.keys(k.claim_pattern))
    return present


# --- merge ----------------------------------------------------------------------------------------------


async def test_unidentified_contacts_merge_into_the_winner(client):
    """An email-only and a token-only profile of one person become one contact with both, once the ID arrives."""
    vid_x, vid_y = str(uuid.uuid4()), str(uuid.uuid4())
    x_views, y_views = page_views(2, prefix="x"), page_views(2, start=5, prefix="y")
    await beacon(client, vid_x, x_views)
    await beacon(client, vid_y, y_views)
    status, x = await call(client, "POST", "/api/v1/contact", {
        "channels": [{"type": "email", "value": "mia@example.com"}], "visitorIds": [vid_x]})
    assert status == 200 and x["status"] == "created", x
    status, y = await call(client, "POST", "/api/v1/contact", {
        "channels": [{"type": "mobilepush", "value": "tok-mia"}], "visitorIds": [vid_y]})
    assert status == 200 and y["status"] == "created" and y["id"] != x["id"], y

    status, m = await call(client, "POST", "/api/v1/contact", {
        "externalCustomerId": "M-1", "channels": [{"type": "email", "value": "mia@example.com"},
                                                  {"type": "mobilepush", "value": "tok-mia"}]})
    assert status == 200, m
    winner, loser = x["id"], y["id"]  # email outranks mobilepush
    assert m["id"] == winner and m["status"] == "merged" and m["mergedContactIds"] == [loser]
    assert m["externalCustomerId"] == "M-1"

    status, gone = await call(client, "GET", f"/api/v1/contact/{loser}")
    assert status == 404 and gone["mergedInto"] == winner and gone["error"] and gone["message"]
    status, contact = await call(client, "GET", f"/api/v1/contact/{winner}")
    assert contact["externalCustomerId"] == "M-1"
    assert {(c["type"], c["value"]) for c in contact["channels"]} == {
        ("email", "mia@example.com"), ("mobilepush", "tok-mia")}
    assert sorted(contact["visitorIds"]) == sorted([vid_x, vid_y])
    assert await timeline_ids(client, winner) == [e["id"] for e in x_views + y_views]
    assert await search_total(client) == 1
    assert await search_total(client, email="mia@example.com") == 1

    # the loser's browser now feeds the winner
    status, history = await call(client, "GET", f"/api/v1/visitor/{vid_y}/events")
    assert history["linkedContactId"] == winner
    later = page_views(1, start=20, prefix="y-later")
    await beacon(client, vid_y, later)
    assert (await wait_for_timeline(client, winner, [later[0]["id"]]))[-1] == later[0]["id"]

    merged = [e for e in await actions(client, winner) if e["action"] == "merged"]
    assert [e["mergedContactId"] for e in merged] == [loser]
    into = [e for e in await actions(client, loser) if e["action"] == "merged_into"]
    assert [e["intoContactId"] for e in into] == [winner]


async def test_contacts_with_different_external_ids_are_never_merged(client):
    """A shared mailbox: two IDs keep two contacts; an ID-less call picks the unidentified one, else the newest."""
    email = {"type": "email", "value": "family@example.com"}
    status, c1 = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "C-1", "channels": [email]})
    assert status == 200 and c1["status"] == "created", c1
    await asyncio.sleep(0.01)
    status, c2 = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "C-2", "channels": [email]})
    assert status == 200 and c2["status"] == "created" and c2["id"] != c1["id"], c2
    assert c2["mergedContactIds"] == []
    for cid, ext in ((c1["id"], "C-1"), (c2["id"], "C-2")):
        status, contact = await call(client, "GET", f"/api/v1/contact/{cid}")
        assert status == 200 and contact["externalCustomerId"] == ext
        assert contact["channels"] == [{"type": "email", "value": "family@example.com"}]
    assert await search_total(client, email="family@example.com") == 2

    # without an ID, both hold external IDs: the most recently updated one is meant
    await asyncio.sleep(0.01)
    status, r = await call(client, "POST", "/api/v1/contact", {"firstName": "Newest", "channels": [email]})
    assert status == 200 and r["id"] == c2["id"] and r["status"] == "updated", r
    await asyncio.sleep(0.01)
    status, r = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "C-1", "firstName": "Touched"})
    assert status == 200 and r["id"] == c1["id"], r
    await asyncio.sleep(0.01)
    status, r = await call(client, "POST", "/api/v1/contact", {"lastName": "Again", "channels": [email]})
    assert status == 200 and r["id"] == c1["id"], r

    # an unidentified holder of the address wins over the identified ones, however old it is
    status, n = await call(client, "POST", "/api/v1/contact", {"channels": [{"type": "webpush", "value": "wp-1"}]})
    assert status == 200 and n["status"] == "created", n
    status, r = await call(client, "PUT", f"/api/v1/contact/{n['id']}", {"channels": [email]})
    assert status == 200 and r["id"] == n["id"], r
    await asyncio.sleep(0.01)
    status, r = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "C-2", "firstName": "Later"})
    assert status == 200 and r["id"] == c2["id"], r
    await asyncio.sleep(0.01)
    status, r = await call(client, "POST", "/api/v1/contact", {"firstName": "Who", "channels": [email]})
    assert status == 200 and r["id"] == n["id"] and r["mergedContactIds"] == [], r

    # a new ID takes over only the unidentified profile; once none is left it gets a contact of its own
    status, r = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "C-3", "channels": [email]})
    assert status == 200 and r["id"] == n["id"] and r["status"] == "updated", r
    status, r = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "C-4", "channels": [email]})
    assert status == 200 and r["status"] == "created" and r["id"] not in (c1["id"], c2["id"], n["id"]), r
    assert await search_total(client, email="family@example.com") == 4
    for ext, cid in (("C-1", c1["id"]), ("C-2", c2["id"]), ("C-3", n["id"])):
        status, contact = await call(client, "GET", f"/api/v1/contact/{cid}")
        assert contact["externalCustomerId"] == ext


# --- soft delete, restore, identity log ------------------------------------------------------------------


async def test_soft_deleted_contact_is_restored_by_its_external_id(client):
    """A deleted contact is hidden from GET and search; posting its ID again restores it with its timeline."""
    vid = str(uuid.uuid4())
    views = page_views(3)
    await beacon(client, vid, views)
    status, sub = await call(client, "POST", "/api/v1/contact/subscribe", {
        "contact": {"externalCustomerId": "R-1", "channels": [{"type": "email", "value": "rita@example.com"}],
                    "visitorIds": [vid]}})
    assert status == 200 and sub["stitchedEvents"] == 3, sub
    cid = sub["id"]

    status, deleted = await call(client, "DELETE", f"/api/v1/contact/{cid}")
    assert status == 200 and deleted == {"id": cid, "status": "deleted"}
    status, err = await call(client, "GET", f"/api/v1/contact/{cid}")
    assert status == 404 and err["error"] and err["message"]
    status, _ = await call(client, "GET", f"/api/v1/contact/{cid}/events")
    assert status == 404
    assert await search_total(client) == 0
    assert await search_total(client, externalCustomerId="R-1") == 0
    assert await search_total(client, email="rita@example.com") == 0

    status, back = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "R-1", "firstName": "Rita"})
    assert status == 200, back
    assert back["id"] == cid and back["status"] == "restored"
    status, contact = await call(client, "GET", f"/api/v1/contact/{cid}")
    assert status == 200 and contact["firstName"] == "Rita"
    assert contact["channels"] == [{"type": "email", "value": "rita@example.com"}]
    assert await timeline_ids(client, cid) == [e["id"] for e in views]
    assert await search_total(client, externalCustomerId="R-1") == 1
    assert await search_total(client) == 1


async def test_identity_log_shows_each_identity_change_as_it_happens(client):
    """created, assigned_external_id, linked_visitor, merged, deleted and restored appear in order, with details."""
    status, w = await call(client, "POST", "/api/v1/contact", {"channels": [{"type": "mobilepush", "value": "t-9"}]})
    cid = w["id"]
    assert [e["action"] for e in await actions(client, cid)] == ["created"]

    status, r = await call(client, "POST", "/api/v1/contact", {
        "externalCustomerId": "L-9", "channels": [{"type": "mobilepush", "value": "t-9"}]})
    assert r["id"] == cid, r
    log = await actions(client, cid)
    assert [e["action"] for e in log] == ["created", "assigned_external_id"]
    assert log[-1]["externalCustomerId"] == "L-9" and log[-1]["previous"] is None

    vid = str(uuid.uuid4())
    await beacon(client, vid, page_views(1))
    status, r = await call(client, "POST", "/api/v1/contact/subscribe", {
        "contact": {"externalCustomerId": "L-9", "visitorIds": [vid]}})
    assert r["id"] == cid, r
    log = await actions(client, cid)
    assert log[-1]["action"] == "linked_visitor" and log[-1]["visitorId"] == vid

    status, other = await call(client, "POST", "/api/v1/contact", {
        "channels": [{"type": "email", "value": "lee@example.com"}]})
    status, r = await call(client, "POST", "/api/v1/contact", {
        "externalCustomerId": "L-9", "channels": [{"type": "email", "value": "lee@example.com"}]})
    assert r["id"] == cid and r["status"] == "merged", r
    log = await actions(client, cid)
    assert log[-1]["action"] == "merged" and log[-1]["mergedContactId"] == other["id"]

    status, _ = await call(client, "DELETE", f"/api/v1/contact/{cid}")
    assert status == 200
    assert (await actions(client, cid))[-1]["action"] == "deleted"
    status, r = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "L-9"})
    assert r["status"] == "restored", r
    log = await actions(client, cid)
    assert [e["action"] for e in log] == ["created", "assigned_external_id", "linked_visitor", "merged",
                                          "deleted", "restored"]
    assert all(isinstance(e["at"], int) for e in log)


# --- erase ---------------------------------------------------------------------------------------------


async def test_erase_removes_the_person_from_sql_and_redis(client, database_url, redis_client, settings):
    """erase=true deletes the contact, identifiers, timeline, groups, links and its visitors' Redis history."""
    vid = str(uuid.uuid4())
    await beacon(client, vid, page_views(2))
    status, sub = await call(client, "POST", "/api/v1/contact/subscribe", {
        "contact": {"externalCustomerId": "E-1", "channels": [{"type": "email", "value": "eve@example.com"},
                                                              {"type": "sms", "value": "+447911123456"}],
                    "visitorIds": [vid]},
        "groups": ["vip"]})
    assert status == 200 and sub["stitchedEvents"] == 2, sub
    cid = sub["id"]
    later = page_views(1, start=10, prefix="later")
    await beacon(client, vid, later)
    await wait_for_timeline(client, cid, [later[0]["id"]])
    assert await rows_of(database_url, cid) == {"contacts": 1, "identifiers": 2, "timeline": 3,
                                                "group_members": 1, "visitor_links": 1}
    present = await redis_keys_of(redis_client, settings, vid)
    assert present["link"] and present["ids"], present

    status, erased = await call(client, "DELETE", f"/api/v1/contact/{cid}", params={"erase": "true"})
    assert status == 200 and erased == {"id": cid, "status": "erased"}
    status, err = await call(client, "GET", f"/api/v1/contact/{cid}")
    assert status == 404 and "mergedInto" not in err
    assert await search_total(client) == 0
    assert await search_total(client, email="eve@example.com") == 0
    assert await search_total(client, sms="+447911123456") == 0
    assert await search_total(client, externalCustomerId="E-1") == 0
    assert await rows_of(database_url, cid) == dict.fromkeys(("contacts", *PERSON_TABLES), 0)
    kept = await sql(database_url, "SELECT action FROM identity_log WHERE contact_id = :c", c=cid)
    assert kept == [("erased",)], "only the record of the erase itself may outlive the person"
    assert await redis_keys_of(redis_client, settings, vid) == dict.fromkeys(("events", "ids", "link", "claim"),
                                                                             False)

    # the browser is anonymous again, and the same ID later starts from nothing
    fresh = page_views(1, start=20, prefix="fresh")
    await beacon(client, vid, fresh)
    status, history = await call(client, "GET", f"/api/v1/visitor/{vid}/events")
    assert history["linkedContactId"] is None and [e["id"] for e in history["events"]] == [fresh[0]["id"]]
    status, again = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "E-1"})
    assert status == 200 and again["status"] == "created" and again["id"] != cid, again
    status, contact = await call(client, "GET", f"/api/v1/contact/{again['id']}")
    assert contact["channels"] == [] and contact["groups"] == [] and contact["visitorIds"] == []
    assert await timeline_ids(client, again["id"]) == []


async def test_an_erased_contacts_id_is_never_given_to_someone_else(client):
    """After an erase, the next new contact gets a fresh id, not the erased person's id and audit trail."""
    status, c = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "G-1"})
    assert status == 200, c
    status, _ = await call(client, "DELETE", f"/api/v1/contact/{c['id']}", params={"erase": "true"})
    assert status == 200
    status, new = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "G-2"})
    assert status == 200 and new["status"] == "created", new
    assert new["id"] != c["id"]
    assert [e["action"] for e in await actions(client, new["id"])] == ["created"]


async def test_delete_by_external_id_soft_then_erase(client, database_url):
    """DELETE ?externalCustomerId= soft-deletes (restorable) and, with erase=true, erases even a deleted one."""
    status, c = await call(client, "POST", "/api/v1/contact", {
        "externalCustomerId": "X-1", "channels": [{"type": "email", "value": "xena@example.com"}]})
    cid = c["id"]
    status, r = await call(client, "DELETE", "/api/v1/contact", params={"externalCustomerId": "X-1"})
    assert status == 200 and r == {"id": cid, "status": "deleted"}
    status, _ = await call(client, "GET", f"/api/v1/contact/{cid}")
    assert status == 404
    assert (await sql(database_url, "SELECT count(*) FROM contacts WHERE id = :c", c=cid))[0][0] == 1

    status, r = await call(client, "DELETE", "/api/v1/contact", params={"externalCustomerId": "X-1", "erase": "true"})
    assert status == 200 and r == {"id": cid, "status": "erased"}
    assert await rows_of(database_url, cid) == dict.fromkeys(("contacts", *PERSON_TABLES), 0)
    status, r = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "X-1"})
    assert status == 200 and r["status"] == "created" and r["id"] != cid, r

    status, r = await call(client, "DELETE", "/api/v1/contact", params={"externalCustomerId": "X-1"})
    assert status == 200 and r["status"] == "deleted"
    status, r = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "X-1"})
    assert r["status"] == "restored", r


async def test_delete_of_an_unknown_contact_is_404(client):
    """Deleting or erasing a contact that does not exist answers a JSON 404 and changes nothing."""
    status, c = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "K-1"})
    for path, params in ((f"/api/v1/contact/{c['id'] + 1000}", {}),
                         (f"/api/v1/contact/{c['id'] + 1000}", {"erase": "true"}),
                         ("/api/v1/contact", {"externalCustomerId": "nobody"}),
                         ("/api/v1/contact", {"externalCustomerId": "nobody", "erase": "true"})):
        status, err = await call(client, "DELETE", path, params=params)
        assert status == 404, (path, params, err)
        assert err["error"] and err["message"]
    assert await search_total(client) == 1


async def test_erase_takes_the_profiles_merged_into_the_contact_with_it(client, database_url, redis_client,
                                                                         settings):
    """Erasing a merge winner also erases the unidentified profiles folded into it, and their visitors."""
    vid_x, vid_y = str(uuid.uuid4()), str(uuid.uuid4())
    await beacon(client, vid_x, page_views(1, prefix="x"))
    await beacon(client, vid_y, page_views(1, prefix="y"))
    status, x = await call(client, "POST", "/api/v1/contact", {
        "channels": [{"type": "email", "value": "max@example.com"}], "visitorIds": [vid_x]})
    status, y = await call(client, "POST", "/api/v1/contact", {
        "channels": [{"type": "sms", "value": "+380501112233"}], "visitorIds": [vid_y]})
    status, w = await call(client, "POST", "/api/v1/contact", {
        "externalCustomerId": "W-1", "channels": [{"type": "email", "value": "max@example.com"},
                                                  {"type": "sms", "value": "+380501112233"}]})
    assert w["id"] == x["id"] and w["mergedContactIds"] == [y["id"]], w

    status, _ = await call(client, "DELETE", f"/api/v1/contact/{w['id']}", params={"erase": "1"})
    assert status == 200
    for cid in (x["id"], y["id"]):
        status, err = await call(client, "GET", f"/api/v1/contact/{cid}")
        assert status == 404 and "mergedInto" not in err
        assert await rows_of(database_url, cid) == dict.fromkeys(("contacts", *PERSON_TABLES), 0)
    for vid in (vid_x, vid_y):
        assert not any((await redis_keys_of(redis_client, settings, vid)).values())
    assert await search_total(client, sms="+380501112233") == 0


async def test_erasing_the_first_user_of_a_shared_browser_leaves_the_second_users_link(client):
    """Erasing A, who once used B's browser, must not cut B off from the beacons of that browser."""
    vid = str(uuid.uuid4())
    await beacon(client, vid, page_views(1, prefix="a"))
    status, a = await call(client, "POST", "/api/v1/contact/subscribe", {
        "contact": {"externalCustomerId": "SA-1", "visitorIds": [vid]}})
    status, b = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "SB-1", "visitorIds": [vid]})
    assert status == 200 and b["id"] != a["id"], b

    status, _ = await call(client, "DELETE", f"/api/v1/contact/{a['id']}", params={"erase": "true"})
    assert status == 200
    status, contact = await call(client, "GET", f"/api/v1/contact/{b['id']}")
    assert contact["visitorIds"] == [vid]
    status, history = await call(client, "GET", f"/api/v1/visitor/{vid}/events")
    assert status == 200 and history["linkedContactId"] == b["id"], history
    later = page_views(1, start=10, prefix="b")
    await beacon(client, vid, later)
    await wait_for_timeline(client, b["id"], [later[0]["id"]])


async def test_erasing_the_first_user_of_a_shared_browser_drops_only_their_claimed_history(client, redis_client,
                                                                                           settings):
    """The browser B uses now keeps its Redis state; only what A's unfinished stitch had claimed goes with A."""
    vid = str(uuid.uuid4())
    await beacon(client, vid, page_views(1, prefix="a"))
    status, a = await call(client, "POST", "/api/v1/contact/subscribe", {
        "contact": {"externalCustomerId": "SA-2", "visitorIds": [vid]}})
    assert status == 200, a
    status, b = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "SB-2", "visitorIds": [vid]})
    assert status == 200 and b["id"] != a["id"], b
    k = VisitorKeys(vid, settings.partitions)
    # what a stitch of each person that crashed before releasing its claim would leave behind
    for cid, prefix in ((a["id"], "claimed-a"), (b["id"], "claimed-b")):
        (event,) = page_views(1, prefix=prefix)
        await redis_client.rpush(k.claim(cid), orjson.dumps({**event, "t": event["ts"], "rt": SENT_AT_MS}))
    assert (await redis_keys_of(redis_client, settings, vid))["ids"]

    status, _ = await call(client, "DELETE", f"/api/v1/contact/{a['id']}", params={"erase": "true"})
    assert status == 200
    assert await redis_client.keys(k.claim_pattern) == [k.claim(b["id"]).encode()]
    assert await redis_keys_of(redis_client, settings, vid) == {"events": False, "ids": True, "link": True,
                                                                "claim": True}
    assert int(await redis_client.get(k.link)) == b["id"]
