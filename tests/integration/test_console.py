"""The console's pages (SPEC §4a) as plain HTTP: auth, escaping, the woven story, search, errors as pages."""

from __future__ import annotations

import functools
import re
import uuid
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from stitcher.console.throughput import KEY, MINUTES, SharedMinutes
from tests.conftest import auth
from tests.helpers import beacon, call, page_views

HOSTILE = "<script>alert('x')</script>"


async def page(client: Any, path: str, status: int = 200) -> str:
    r = await client.get(path, headers=auth(), allow_redirects=False)
    body = await r.text()
    assert r.status == status, body
    assert r.content_type == "text/html"
    return body


def entries(html: str) -> list[str]:
    """The story's entries, in page order, each as its HTML."""
    return re.findall(r'<li class="entry .*?</li>', html, re.S)


async def subscribe(client: Any, vid: str, ext: str = "C-1", **contact: Any) -> int:
    status, body = await call(client, "POST", "/api/v1/contact/subscribe", {"contact": {
        "externalCustomerId": ext, "channels": [{"type": "email", "value": f"{ext.lower()}@example.com"}],
        "visitorIds": [vid], **contact}, "groups": ["news"]})
    assert status == 200, body
    return int(body["id"])


async def test_every_page_asks_for_the_key(client):
    """Without the API key (or with a wrong one) every console page is a 401 asking for HTTP Basic."""
    for method, path in (("GET", "/console/"), ("GET", "/console/contact/1"), ("GET", "/console/overview"),
                         ("POST", "/console/search")):
        for headers in ({}, auth("wrong")):
            r = await client.request(method, path, headers=headers, data={"q": "x"})
            assert r.status == 401, path
            assert r.headers["WWW-Authenticate"].startswith("Basic")
            assert r.content_type == "text/html"


async def test_story_marks_the_pre_subscription_views_anonymous_before_the_subscribe(client):
    """Example 2: the page views from before the subscribe are marked anonymous with their visitor, then
    the identity changes of the subscribe, then the known events."""
    vid = str(uuid.uuid4())
    before = page_views(3)
    await beacon(client, vid, before)
    cid = await subscribe(client, vid, firstName="Ann")
    status, body = await call(client, "POST", "/api/v2/event", {
        "eventTypeKey": "login", "keyValue": "C-1", "params": [{"name": "plan", "value": "pro"}]})
    assert status in (200, 201, 202), body
    html = await page(client, f"/console/contact/{cid}")
    rows = entries(html)
    kinds = [("anonymous" if 'data-kind="anonymous"' in r else "identity" if 'data-kind="identity"' in r
              else "known") for r in rows]
    assert kinds[:3] == ["anonymous"] * 3, kinds
    assert all(vid in r and e["url"] in r for r, e in zip(rows[:3], before, strict=True))
    assert "created" in rows[3] and kinds[3] == "identity"
    assert any("linked_visitor" in r for r in rows[3:])
    assert any('data-source="api"' in r and "login" in r for r in rows[4:])
    assert "c-1@example.com" in html and "news" in html
    assert html.count('<rect class="anon"') >= 1


async def test_hostile_names_are_escaped(client):
    """A name, an event's title and a group named like a script come out as text, never as markup."""
    vid = str(uuid.uuid4())
    await beacon(client, vid, [{"id": "pv-x", "type": "page_view", "ts": 1_800_000_000_000,
                                "url": "https://shop.example/?q=<b>", "title": HOSTILE}])
    cid = await subscribe(client, vid, firstName=HOSTILE, lastName='"><img src=x onerror=alert(1)>')
    html = await page(client, f"/console/contact/{cid}")
    assert "<script>alert" not in html and "<img src=x" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    r = await client.get(f"/console/contact/{cid}", headers=auth())
    assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert r.headers["Cache-Control"] == "no-store"


async def test_console_without_its_slash_goes_to_the_search(client):
    """``/console`` redirects to ``/console/``; the static files load with the key, are a 401 asking for it
    without (or with a wrong one), and only the console's own files are served."""
    r = await client.get("/console", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/console/"
    for name, kind in (("console.css", "text/css"), ("console.js", "javascript")):
        r = await client.get(f"/console/static/{name}", headers=auth())
        assert r.status == 200 and kind in r.headers["Content-Type"]
        served = (await r.text()).strip().splitlines()[0]
        for headers in ({}, {"Authorization": "Basic eDp3cm9uZw=="}):
            r = await client.get(f"/console/static/{name}", headers=headers)
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
            assert served not in await r.text()
    for name in ("..%2Fhandlers.py", "nope.css", "%00", "console.css%00", "%2E%2E%2F__init__.py"):
        r = await client.get(f"/console/static/{name}", headers=auth(), allow_redirects=False)
        assert r.status == 404, name


async def test_unknown_and_malformed_ids_are_pages_not_500(client):
    """An unknown contact is a 404 page; a malformed id or cursor a 400 page."""
    assert "Not found" in await page(client, "/console/contact/999999", 404)
    for path in ("/console/contact/abc", "/console/contact/0", "/console/contact/99999999999999999999",
                 "/console/contact/1?after=x.y", "/console/contact/1?after=%00"):
        await page(client, path, 400)


async def test_search_redirects_to_the_one_contact_by_each_identifier(client):
    """External ID, email, phone or visitor id: one hit is a 303 to the contact's page (only its id in the URL)."""
    vid = str(uuid.uuid4())
    cid = await subscribe(client, vid, ext="C-9", channels=[{"type": "email", "value": "Nine@Example.com"},
                                                              {"type": "sms", "value": "+380 67 100 00 09"}])
    for q, kind in (("C-9", "any"), ("nine@example.COM", "any"), ("+380671000009", "any"),
                    ("+380 67 100 00 09", "phone"), (vid.upper(), "any"), (vid, "visitor"), ("C-9", "external")):
        r = await client.post("/console/search", data={"q": q, "kind": kind}, headers=auth(), allow_redirects=False)
        assert r.status == 303, (q, kind, await r.text())
        assert r.headers["Location"] == f"/console/contact/{cid}"


async def test_search_lists_several_and_says_when_nobody_matches(client):
    """Two people sharing an email are listed; an unknown one gets a friendly message; bad input a 400 page."""
    for ext in ("C-A", "C-B"):
        status, body = await call(client, "POST", "/api/v1/contact", {
            "externalCustomerId": ext, "firstName": HOSTILE,
            "channels": [{"type": "email", "value": "shared@example.com"}]})
        assert status == 200, body
    r = await client.post("/console/search", data={"q": "shared@example.com"}, headers=auth())
    html = await r.text()
    assert r.status == 200 and "2 people match" in html and "<script>alert" not in html
    r = await client.post("/console/search", data={"q": "nobody@example.com"}, headers=auth())
    assert r.status == 200 and "Nobody found" in await r.text()
    for data in ({"q": "a\x00b"}, {"q": ""}, {"q": "x" * 2000}, {"q": "x", "kind": "nope"},
                 {"q": "not-a-uuid", "kind": "visitor"}, {"q": "bad@", "kind": "email"}):
        r = await client.post("/console/search", data=data, headers=auth())
        assert r.status == 400, (data, await r.text())
        assert r.content_type == "text/html"


async def test_a_merge_links_both_contacts(client):
    """A merge shows in the winner's identity log with a link to the merged contact, whose page links back."""
    status, loser = await call(client, "POST", "/api/v1/contact", {
        "channels": [{"type": "email", "value": "m@example.com"}]})
    assert status == 200, loser
    status, winner = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "C-M"})
    status, merged = await call(client, "POST", "/api/v1/contact", {
        "externalCustomerId": "C-M", "channels": [{"type": "email", "value": "m@example.com"}]})
    assert merged["mergedContactIds"] == [loser["id"]], merged
    html = await page(client, f"/console/contact/{winner['id']}")
    assert f'<a class="contact-link" href="/console/contact/{loser["id"]}">' in html
    html = await page(client, f"/console/contact/{loser['id']}")
    assert "Merged into" in html and f'href="/console/contact/{winner["id"]}"' in html


async def test_long_stories_are_paged(client):
    """Past one page the story links to the next; every event appears once and the identity changes once."""
    vid = str(uuid.uuid4())
    views = page_views(70)
    await beacon(client, vid, views[:35])
    await beacon(client, vid, views[35:])
    cid = await subscribe(client, vid)
    first = await page(client, f"/console/contact/{cid}")
    cursor = re.search(r'href="/console/contact/\d+\?after=([0-9.]+)"', first)
    assert cursor is not None
    second = await page(client, f"/console/contact/{cid}?after={cursor.group(1)}")
    rows = entries(first) + entries(second)
    assert sum("page_view" in r for r in rows) == 70
    assert sum(">created<" in r for r in rows) == 1


async def test_overview_shows_rejections_held_events_and_imports(client):
    """The overview lists a rejected beacon event with its reason, the held count and a running import."""
    r = await client.post("/t", data=orjson.dumps({"vid": str(uuid.uuid4()), "events": [
        {"id": "ok-1", "type": "page_view", "url": "https://shop.example/"},
        {"id": "bad-1", "type": HOSTILE, "url": 5}]}), headers={"Content-Type": "text/plain"})
    assert r.status == 204
    status, body = await call(client, "POST", "/api/v2/event", {"eventTypeKey": "x", "keyValue": "nobody@example.com"})
    assert status in (200, 201, 202), body
    html = await page(client, "/console/overview")
    assert "bad-1" in html and "url: must be a string" in html and "<script>alert" not in html
    assert re.search(r'<dd id="held">1</dd>', html)
    assert "No import is running." in html


async def test_overview_shows_a_running_import_with_its_progress(client, database_url):
    """An import still running is listed with its rows done of its total."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO imports (id, status, total, next_row, created, updated, restored, skipped, failed,"
                " created_at, updated_at) VALUES ('imp-1', 'IMPORTING', 3000, 1000, 900, 100, 0, 0, 0, 1, 2)"))
    finally:
        await engine.dispose()
    html = await page(client, "/console/overview")
    assert "imp-1" in html and "1000 of 3000 rows" in html
    assert '<progress max="3000" value="1000">' in html


async def test_hostile_requests_are_4xx_pages(client):
    """Wrong content types, huge, duplicate or nested bodies and odd methods never reach a 500."""
    probes = [
        ({"data": orjson.dumps({"q": "C-1"}), "headers": {"Content-Type": "application/json"}}, 400),
        ({"data": b"q=" + b"x" * 3_000_000, "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 413),
        ({"data": b"q=C-1&q=C-2&kind=any&kind=email"}, None),
        ({"data": b"q=%FF%FE", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, None),
        ({"data": {"q": "x" * 1024, "kind": "external"}}, None),
    ]
    for kw, expected in probes:
        headers = {**auth(), **kw.pop("headers", {})}
        r = await client.post("/console/search", headers=headers, **kw)
        assert r.status < 500, (kw, await r.text())
        if expected is not None:
            assert r.status == expected
    for path in ("/console/contact/1%00", "/console/contact/-1", "/console/contact/1?after=1.2.3",
                 "/console/contact/1?after=99999999999999999999.1"):
        r = await client.get(path, headers=auth())
        assert 400 <= r.status < 500, path
    r = await client.put("/console/search", headers=auth())
    assert r.status == 405


async def test_the_overviews_minutes_are_every_processs(redis_client):
    """Two processes' samplers add to the same minutes in Redis; each reads the sum; quiet minutes read 0."""
    counters = [{"received": 0.0, "stitched": 0.0}, {"received": 0.0, "stitched": 0.0}]
    one, two = (SharedMinutes(redis_client, functools.partial(dict, c)) for c in counters)
    counters[0]["received"], counters[1]["received"], counters[1]["stitched"] = 5, 3, 2
    await one.sample(now=60 * 10 + 1)
    await two.sample(now=60 * 10 + 2)
    counters[0]["received"] = 9
    await one.sample(now=60 * 12)
    for ring in (one, two):
        assert await ring.rows(now=60 * 12, last=3) == [
            (12 * 60_000, {"received": 4, "rejected": 0, "stitched": 0, "worker": 0}),
            (11 * 60_000, {"received": 0, "rejected": 0, "stitched": 0, "worker": 0}),
            (10 * 60_000, {"received": 8, "rejected": 0, "stitched": 2, "worker": 0})]
    assert 0 < await redis_client.ttl(f"{KEY}10") <= (MINUTES + 2) * 60
