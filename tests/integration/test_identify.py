"""Signed identify end to end (``POST /t/identify`` → Redis stream → the stitcher's consumer → contact API link),
on real Redis and SQL, through both fronts (the edge hands the path to aiohttp; aiohttp alone).

The site's backend signs the external customer ID with IDENTIFY_SECRET (HMAC-SHA256, hex); a browser that
posts it with a valid signature is linked exactly as ``POST /api/v1/contact {externalCustomerId, visitorIds}``
would link it; anything else is refused with a JSON 4xx and links nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import DummyCookieJar, web
from aiohttp.test_utils import TestClient

from tests.edge_server import EdgeTestServer
from tests.helpers import beacon, call, eventually, recent_page_views
from tracker.keys import IDENTIFY
from tracker.settings import Settings
from tracker.visitor import COOKIE

SECRET, OLD_SECRET = "new-identify-secret", "old-identify-secret"
SHOP = "https://shop.example"
DEADLINE_S = 15.0  # generous: the consumer links within about a second on an idle machine
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


def signed(external_id: str, secret: str = SECRET) -> str:
    """What the site's backend computes (the README's three lines)."""
    return hmac.new(secret.encode(), external_id.encode(), hashlib.sha256).hexdigest()


@pytest.fixture(params=["edge", "aiohttp"])
def make_client(aiohttp_client: Any, settings: Settings, request: pytest.FixtureRequest) -> MakeClient:
    """The whole service (tracker, contacts API, worker, identify consumer) with ``IDENTIFY_SECRET`` set to
    ``secrets``; through the edge (as ``stitcher serve`` listens) and through aiohttp alone."""
    from stitcher.app import init_app

    async def make(secrets: tuple[str, ...] = (SECRET,)) -> Client:
        app = init_app(dataclasses.replace(settings, identify_secrets=secrets))
        server = EdgeTestServer(app) if request.param == "edge" else app
        return await aiohttp_client(server, cookie_jar=DummyCookieJar())  # type: ignore[no-any-return]

    return make


async def identify(client: Client, body: dict[str, Any], **headers: str) -> tuple[int, dict[str, Any], Any]:
    """POST /t/identify as t.js sends it (text/plain); (status, JSON body, headers)."""
    r = await client.post("/t/identify", data=orjson.dumps(body),
                          headers={"Content-Type": "text/plain;charset=UTF-8", **headers})
    return r.status, await r.json(), r.headers


async def contact_with(client: Client, external_id: str) -> dict[str, Any] | None:
    """The live contact holding ``external_id`` (GET by id, with its visitors), or None."""
    r = await client.get("/api/v1/contacts", params={"externalCustomerId": external_id},
                         headers={"Authorization": _auth()})
    assert r.status == 200, await r.text()
    found = await r.json()
    if not found:
        return None
    status, contact = await call(client, "GET", f"/api/v1/contact/{found[0]['id']}")
    assert status == 200, contact
    return dict(contact)


def _auth() -> str:
    from tests.conftest import auth

    return auth()["Authorization"]


async def timeline_ids(client: Client, contact_id: int) -> list[str]:
    status, page = await call(client, "GET", f"/api/v1/contact/{contact_id}/events", params={"limit": "1000"})
    assert status == 200, page
    return [e["id"] for e in page["events"]]


async def linked(client: Client, external_id: str, *vids: str) -> dict[str, Any]:
    """Wait until the contact holding ``external_id`` lists ``vids`` among its visitors."""
    contact = await eventually(lambda: contact_with(client, external_id),
                               lambda c: c is not None and set(vids) <= set(c["visitorIds"]), DEADLINE_S)
    assert contact is not None and set(vids) <= set(contact["visitorIds"]), f"not linked to {external_id}: {contact}"
    return contact


async def on_timeline(client: Client, contact_id: int, event_ids: list[str]) -> list[str]:
    ids = await eventually(lambda: timeline_ids(client, contact_id), lambda have: set(event_ids) <= set(have),
                           DEADLINE_S)
    assert set(event_ids) <= set(ids), f"missing on the timeline: {set(event_ids) - set(ids)}"
    return ids


async def contact_count(client: Client) -> int:
    r = await client.get("/api/v1/contacts", params={"maxrows": "500"}, headers={"Authorization": _auth()})
    assert r.status == 200, await r.text()
    return int(r.headers["TotalCount"])


# --- a valid signature links and stitches ------------------------------------------------------------


async def test_a_signed_identify_creates_the_contact_and_stitches_the_anonymous_history(
        make_client: MakeClient) -> None:
    """A visitor's earlier page views land on the timeline of the contact holding the signed ID (created with
    only that ID, as the contact API creates one), and its later beacons follow by themselves."""
    client = await make_client()
    vid, ext = str(uuid.uuid4()), f"C-{uuid.uuid4().hex[:8]}"
    before = recent_page_views(3, "before")
    await beacon(client, vid, before)
    status, body, headers = await identify(client, {"externalCustomerId": ext, "signature": signed(ext), "vid": vid},
                                           Origin=SHOP)
    assert status == 202, body
    assert body == {"visitorId": vid, "status": "accepted"}
    assert headers["X-Stitcher-Visitor"] == vid and f"{COOKIE}={vid}" in headers["Set-Cookie"]
    assert headers["Access-Control-Allow-Origin"] == SHOP  # the page may read its answer
    contact = await linked(client, ext, vid)
    assert contact["externalCustomerId"] == ext and contact["channels"] == []
    await on_timeline(client, contact["id"], [e["id"] for e in before])
    after = recent_page_views(2, "after")
    await beacon(client, vid, after)
    await on_timeline(client, contact["id"], [e["id"] for e in before + after])
    assert await contact_count(client) == 1


async def test_an_existing_contact_with_the_id_gets_the_history_no_duplicate(make_client: MakeClient) -> None:
    """When the backend already created the contact (subscribe with ID and email), identify links the visitor
    to that same contact: its history joins it, no second contact; the cookie names the visitor."""
    client = await make_client()
    vid, ext = str(uuid.uuid4()), f"C-{uuid.uuid4().hex[:8]}"
    status, made = await call(client, "POST", "/api/v1/contact/subscribe", {"contact": {
        "externalCustomerId": ext, "channels": [{"type": "email", "value": f"{ext}@example.com"}]}})
    assert status == 200, made
    before = recent_page_views(2, "before")
    await beacon(client, vid, before)
    status, body, _ = await identify(client, {"externalCustomerId": ext, "signature": signed(ext)},
                                     Cookie=f"{COOKIE}={vid}")
    assert status == 202 and body["visitorId"] == vid, body
    contact = await linked(client, ext, vid)
    assert contact["id"] == made["id"]
    await on_timeline(client, made["id"], [e["id"] for e in before])
    assert await contact_count(client) == 1
    status, log = await call(client, "GET", f"/api/v1/contact/{made['id']}/identity-log")
    assert [e["visitorId"] for e in log["entries"] if e["action"] == "linked_visitor"] == [vid]


async def test_identify_repeated_on_every_page_links_once(make_client: MakeClient) -> None:
    """A site identifying on every page: the repeats change nothing (one link, one history, one contact)."""
    client = await make_client()
    vid, ext = str(uuid.uuid4()), f"C-{uuid.uuid4().hex[:8]}"
    views = recent_page_views(2, "p")
    await beacon(client, vid, views)
    for _ in range(3):
        status, body, _ = await identify(client, {"externalCustomerId": ext, "signature": signed(ext), "vid": vid})
        assert status == 202, body
    contact = await linked(client, ext, vid)
    ids = await on_timeline(client, contact["id"], [e["id"] for e in views])
    # every identify handled (the stream drained), then nothing more was written
    await eventually(lambda: _stream_length(client), lambda n: n == 0, DEADLINE_S)
    status, log = await call(client, "GET", f"/api/v1/contact/{contact['id']}/identity-log")
    assert [e["action"] for e in log["entries"]] == ["created", "linked_visitor"], log
    assert sorted(ids) == sorted(await timeline_ids(client, contact["id"]))
    assert await contact_count(client) == 1


async def _stream_length(client: Client) -> int:
    from tracker.app import REDIS

    app = client.server.app
    assert app is not None
    return int(await app[REDIS].xlen(IDENTIFY))


async def test_a_shared_browser_identified_as_someone_else_changes_hands(make_client: MakeClient) -> None:
    """As with the contact API: a visitor identified as A and then as B belongs to B from then on; A keeps
    what happened before."""
    client = await make_client()
    vid, a, b = str(uuid.uuid4()), f"A-{uuid.uuid4().hex[:8]}", f"B-{uuid.uuid4().hex[:8]}"
    first = recent_page_views(2, "a")
    await beacon(client, vid, first)
    await identify(client, {"externalCustomerId": a, "signature": signed(a), "vid": vid})
    ann = await linked(client, a, vid)
    await on_timeline(client, ann["id"], [e["id"] for e in first])
    status, _, _ = await identify(client, {"externalCustomerId": b, "signature": signed(b), "vid": vid})
    assert status == 202
    bob = await linked(client, b, vid)
    later = recent_page_views(2, "b")
    await beacon(client, vid, later)
    await on_timeline(client, bob["id"], [e["id"] for e in later])
    assert not set(await timeline_ids(client, ann["id"])) & {e["id"] for e in later}


async def test_many_identifies_at_once_make_one_contact_per_id_and_keep_each_visitors_order(
        make_client: MakeClient) -> None:
    """Twenty browsers of ten customers (two each) identifying at once end as ten contacts with two visitors
    each, every history stitched; a browser identified as A and at once as B (queued back to back) ends on B."""
    client = await make_client()
    tag = uuid.uuid4().hex[:6]
    vids = [str(uuid.uuid4()) for _ in range(20)]
    views = {vid: recent_page_views(1, vid) for vid in vids}
    for vid in vids:
        await beacon(client, vid, views[vid])
    shared, a, b = str(uuid.uuid4()), f"A-{tag}", f"B-{tag}"

    async def send(vid: str, ext: str) -> None:
        status, body, _ = await identify(client, {"externalCustomerId": ext, "signature": signed(ext), "vid": vid})
        assert status == 202, body

    await asyncio.gather(*(send(vid, f"C-{tag}-{i // 2}") for i, vid in enumerate(vids)))
    await send(shared, a)
    await send(shared, b)
    for i in range(10):
        pair = vids[2 * i:2 * i + 2]
        contact = await linked(client, f"C-{tag}-{i}", *pair)
        await on_timeline(client, contact["id"], [e["id"] for v in pair for e in views[v]])
    await linked(client, b, shared)
    await eventually(lambda: _stream_length(client), lambda n: n == 0, DEADLINE_S)
    ann = await contact_with(client, a)
    assert ann is not None and shared not in ann["visitorIds"]
    assert await contact_count(client) == 12


# --- refusals: nothing linked ---------------------------------------------------------------------------


async def _nothing_linked(client: Client, vid: str, ext: str) -> None:
    """Nothing was queued for the refused identify, and once a good identify sent after it has been handled
    (the consumer works in order), ``ext`` has no contact and ``vid`` is still anonymous."""
    assert await _stream_length(client) == 0
    other_vid, other = str(uuid.uuid4()), f"X-{uuid.uuid4().hex[:8]}"
    status, body, _ = await identify(client, {"externalCustomerId": other, "signature": signed(other),
                                              "vid": other_vid})
    assert status == 202, body
    await linked(client, other, other_vid)
    assert await contact_with(client, ext) is None
    status, history = await call(client, "GET", f"/api/v1/visitor/{vid}/events")
    assert status == 200 and history["linkedContactId"] is None, history


async def test_a_bad_signature_is_403_and_links_nothing(make_client: MakeClient) -> None:
    """A signature made with another secret, or for another ID, is a 403 bad_signature (JSON, readable by the
    page); the visitor stays anonymous and no contact is created."""
    client = await make_client()
    vid, ext = str(uuid.uuid4()), f"C-{uuid.uuid4().hex[:8]}"
    await beacon(client, vid, recent_page_views(1, "p"))
    for signature in (signed(ext, "guessed"), signed("C-other"), "0" * 64, "not hex"):
        status, body, headers = await identify(
            client, {"externalCustomerId": ext, "signature": signature, "vid": vid}, Origin=SHOP)
        assert status == 403 and body["error"] == "bad_signature" and body["status"] == 403, body
        assert headers["Access-Control-Allow-Origin"] == SHOP
        assert "Set-Cookie" not in headers
    await _nothing_linked(client, vid, ext)


async def test_a_missing_signature_is_403_and_links_nothing(make_client: MakeClient) -> None:
    """An unsigned ID is refused, 403 missing_signature."""
    client = await make_client()
    vid, ext = str(uuid.uuid4()), f"C-{uuid.uuid4().hex[:8]}"
    await beacon(client, vid, recent_page_views(1, "p"))
    status, body, _ = await identify(client, {"externalCustomerId": ext, "vid": vid})
    assert status == 403 and body["error"] == "missing_signature", body
    await _nothing_linked(client, vid, ext)


async def test_a_browser_naming_an_email_or_phone_is_refused(make_client: MakeClient) -> None:
    """Even beside a valid signature, an email or phone from a browser is a 400 naming it; nothing linked."""
    client = await make_client()
    vid, ext = str(uuid.uuid4()), f"C-{uuid.uuid4().hex[:8]}"
    await beacon(client, vid, recent_page_views(1, "p"))
    for extra in ({"email": "ann@example.com"}, {"phone": "+380671234567"},
                  {"channels": [{"type": "email", "value": "ann@example.com"}]}):
        status, body, _ = await identify(client, {"externalCustomerId": ext, "signature": signed(ext), "vid": vid,
                                                  **extra})
        assert status == 400 and body["error"] == "validation_failed", body
        assert [e["field"] for e in body["errors"]] == list(extra)
        assert "email, phone" in body["errors"][0]["message"]
    # an email alone, signed or not, names no one either
    status, body, _ = await identify(client, {"email": "ann@example.com", "signature": signed("ann@example.com")})
    assert status == 400, body
    await _nothing_linked(client, vid, ext)
    assert await contact_count(client) == 1  # the probe's contact only


async def test_identify_is_off_without_a_secret(make_client: MakeClient) -> None:
    """No IDENTIFY_SECRET: every identify is a 403 identify_disabled saying so, and nothing is queued."""
    client = await make_client(secrets=())
    ext = "C-1"
    status, body, _ = await identify(client, {"externalCustomerId": ext, "signature": signed(ext, "")})
    assert status == 403 and body["error"] == "identify_disabled", body
    assert "IDENTIFY_SECRET" in body["message"]
    assert await _stream_length(client) == 0


async def test_malformed_identify_bodies_are_json_4xx(make_client: MakeClient) -> None:
    """Not JSON, not an object, an oversized or compressed body: a JSON 4xx, never a 5xx."""
    client = await make_client()
    for raw, headers, expected in ((b"{", {}, 400), (b"[]", {}, 400), (b"x" * 5000, {}, 413),
                                   (b"{}", {"Content-Encoding": "gzip"}, 415)):
        r = await client.post("/t/identify", data=raw, headers={"Content-Type": "text/plain", **headers})
        assert r.status == expected, await r.text()
        assert (await r.json())["status"] == expected
    assert await _stream_length(client) == 0


# --- rotation ---------------------------------------------------------------------------------------------


async def test_rotation_old_secret_accepted_while_configured_then_refused(make_client: MakeClient) -> None:
    """During a rotation (IDENTIFY_SECRET=new,old) pages signed with either secret link; once the old secret
    is removed, its signatures are refused (403) and link nothing."""
    rotating = await make_client(secrets=(SECRET, OLD_SECRET))
    for secret in (OLD_SECRET, SECRET):
        vid, ext = str(uuid.uuid4()), f"C-{uuid.uuid4().hex[:8]}"
        views = recent_page_views(1, "p")
        await beacon(rotating, vid, views)
        status, body, _ = await identify(rotating, {"externalCustomerId": ext, "signature": signed(ext, secret),
                                                    "vid": vid})
        assert status == 202, body
        contact = await linked(rotating, ext, vid)
        await on_timeline(rotating, contact["id"], [e["id"] for e in views])
    await rotating.close()

    rotated = await make_client(secrets=(SECRET,))
    vid, ext = str(uuid.uuid4()), f"C-{uuid.uuid4().hex[:8]}"
    await beacon(rotated, vid, recent_page_views(1, "p"))
    status, body, _ = await identify(rotated, {"externalCustomerId": ext, "signature": signed(ext, OLD_SECRET),
                                               "vid": vid})
    assert status == 403 and body["error"] == "bad_signature", body
    await _nothing_linked(rotated, vid, ext)


def test_the_setting_reads_a_rotation_pair() -> None:
    """IDENTIFY_SECRET=new,old configures both (the current one first); unset, identify is off."""
    assert Settings.from_env({"IDENTIFY_SECRET": "new, old"}).identify_secrets == ("new", "old")
    assert Settings.from_env({}).identify_secrets == ()
    assert "new" not in repr(Settings.from_env({"IDENTIFY_SECRET": "new"}))  # never printed with the settings



async def test_a_json_caller_gets_a_cors_preflight(make_client: MakeClient) -> None:
    """A page posting identify as application/json (a preflighted request) gets the preflight answered."""
    client = await make_client()
    r = await client.options("/t/identify", headers={"Origin": SHOP, "Access-Control-Request-Method": "POST",
                                                     "Access-Control-Request-Headers": "content-type"})
    assert r.status == 204, await r.text()
    assert r.headers["Access-Control-Allow-Origin"] == SHOP and "POST" in r.headers["Access-Control-Allow-Methods"]
