"""Signed identify in headless Chromium: a page calls ``stitcher('identify', {externalCustomerId, signature})``
with a signature the test makes as the site's backend would, and the visitor's earlier page views end up on
the contact's timeline (the whole service: tracker, contacts API, worker, identify consumer)."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import BrowserContext, Page, Request, Response

from stitcher.app import init_app
from tests.browser.conftest import API_KEY, LOOP, RedisProcess, bound_port
from tests.browser.test_tracking_script import cookie_vid, eventually
from tracker.edge.site import EdgeSite
from tracker.settings import Settings

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]
SECRET = "browser-test-identify-secret"


def backend_signs(external_id: str, secret: str = SECRET) -> str:
    """The site's backend: HMAC-SHA256 of the ID under IDENTIFY_SECRET, hex (the README's three lines)."""
    return hmac.new(secret.encode(), external_id.encode(), hashlib.sha256).hexdigest()


@pytest_asyncio.fixture(loop_scope=LOOP)
async def stitcher_service(redis_server: RedisProcess, database_url: str, tmp_path: Path,
                           sqlite_threads_finished: None) -> AsyncIterator[str]:
    """The whole service with IDENTIFY_SECRET set, on a free port as ``stitcher serve`` listens."""
    settings = Settings(redis_url=redis_server.url, database_url=database_url, api_keys=(API_KEY,),
                        var_dir=tmp_path, import_parse_workers=0, identify_secrets=(SECRET,))
    runner = web.AppRunner(init_app(settings))
    await runner.setup()
    await EdgeSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{bound_port(runner)}"
    await runner.cleanup()


async def api(service: str, path: str, **params: str) -> Any:
    headers = {"Authorization": aiohttp.encode_basic_auth("backend", API_KEY)}
    async with aiohttp.ClientSession(headers=headers) as session, \
            session.get(service + path, params=params) as r:
        assert r.status in (200, 404), await r.text()
        return await r.json() if r.status == 200 else None


async def contact_timeline(service: str, external_id: str) -> list[dict[str, Any]] | None:
    """The timeline of the contact holding ``external_id`` (None while there is none)."""
    found = await api(service, "/api/v1/contacts", externalCustomerId=external_id)
    if not found:
        return None
    page = await api(service, f"/api/v1/contact/{found[0]['id']}/events", limit="1000")
    return list(page["events"])


async def anonymous_views(service: str, vid: str, urls: list[str]) -> list[dict[str, Any]] | None:
    history = await api(service, f"/api/v1/visitor/{vid}/events")
    if history is None:
        return None
    views = [e for e in history["events"] if e["type"] == "page_view"]
    return views if {e["url"] for e in views} >= set(urls) else None


async def _now(value: list[Response]) -> list[Response]:
    return value


def identify_requests(page: Page) -> tuple[list[dict[str, Any]], list[Response]]:
    """Bodies of the page's POST /t/identify requests and their answers, from now on."""
    bodies: list[dict[str, Any]] = []
    answers: list[Response] = []

    def on_request(request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/t/identify"):
            bodies.append(json.loads(request.post_data or "{}"))

    def on_response(response: Response) -> None:
        if response.url.endswith("/t/identify"):
            answers.append(response)

    page.on("request", on_request)
    page.on("response", on_response)
    return bodies, answers


async def browse_anonymously(page: Page, context: BrowserContext, service: str) -> tuple[str, list[str]]:
    """Two page views before any login; returns the visitor id and their URLs, once both are stored."""
    urls = [f"{service}/demo/", f"{service}/demo/pricing"]
    await page.goto(urls[0])
    vid = await eventually(lambda: cookie_vid(context), what="the stitcher_vid cookie")
    await eventually(lambda: anonymous_views(service, vid, urls[:1]), what="the first page view")
    await page.goto(urls[1])
    await eventually(lambda: anonymous_views(service, vid, urls), what="both anonymous page views")
    return vid, urls


async def test_identify_in_the_page_puts_the_earlier_page_views_on_the_contacts_timeline(
        stitcher_service: str, page: Page, context: BrowserContext) -> None:
    """A visitor browses anonymously, logs in; the page calls stitcher('identify', ...) with the backend's
    signature: the page views before the login, and the events after it, are on the contact's timeline. The
    script sends only the ID and the signature, even when the page passes more."""
    vid, urls = await browse_anonymously(page, context, stitcher_service)
    ext = f"C-{uuid.uuid4().hex[:10]}"
    bodies, answers = identify_requests(page)
    await page.evaluate("([id, sig]) => stitcher('identify', {externalCustomerId: id, signature: sig, "
                        "email: 'ann@example.com'})", [ext, backend_signs(ext)])
    events = await eventually(lambda: contact_timeline(stitcher_service, ext), within=30.0,
                              what="the contact's timeline")
    assert [e["url"] for e in events if e["type"] == "page_view"] == urls
    assert {e["visitorId"] for e in events} == {vid}
    await eventually(lambda: _now(answers), what="the identify's answer")
    assert answers[0].status == 202
    assert bodies[0] == {"vid": vid, "externalCustomerId": ext, "signature": backend_signs(ext)}

    await page.evaluate("stitcher('event', 'after_login', {step: 1}); stitcher('flush')")

    async def after_login() -> list[dict[str, Any]] | None:
        timeline = await contact_timeline(stitcher_service, ext)
        return timeline if timeline and any(e["type"] == "after_login" for e in timeline) else None

    await eventually(after_login, within=30.0, what="the event after the login on the timeline")


async def test_a_page_with_a_forged_signature_links_nothing(stitcher_service: str, page: Page,
                                                            context: BrowserContext) -> None:
    """A page (or a visitor at its console) that signs an ID itself gets a 403 and stays anonymous; the
    page sees no error."""
    vid, _ = await browse_anonymously(page, context, stitcher_service)
    ext = f"C-{uuid.uuid4().hex[:10]}"
    _, answers = identify_requests(page)
    await page.evaluate("([id, sig]) => stitcher('identify', {externalCustomerId: id, signature: sig})",
                        [ext, backend_signs(ext, "guessed-secret")])
    await eventually(lambda: _now(answers), what="the identify's answer")
    assert answers[0].status == 403
    assert (await answers[0].json())["error"] == "bad_signature"
    # a good identify of another ID after it, once linked, shows the consumer has passed the forged one
    other = f"C-{uuid.uuid4().hex[:10]}"
    await page.evaluate("([id, sig]) => stitcher('identify', {externalCustomerId: id, signature: sig})",
                        [other, backend_signs(other)])
    await eventually(lambda: contact_timeline(stitcher_service, other), within=30.0, what="the good identify's contact")
    assert await api(stitcher_service, "/api/v1/contacts", externalCustomerId=ext) == []
    (holder,) = await api(stitcher_service, "/api/v1/contacts", externalCustomerId=other)

    async def linked_to_other() -> bool:
        history = await api(stitcher_service, f"/api/v1/visitor/{vid}/events")
        return history is not None and history["linkedContactId"] == holder["id"]

    await eventually(linked_to_other, within=30.0, what="the visitor linked to the good identify's contact")


async def test_identify_waits_for_consent_where_the_site_requires_it(stitcher_service: str, page: Page) -> None:
    """With data-consent-required, an identify before consent sends nothing (the browser is not yet tracked);
    after consent it goes."""
    before, after = f"C-{uuid.uuid4().hex[:10]}", f"C-{uuid.uuid4().hex[:10]}"
    bodies, answers = identify_requests(page)
    await page.goto(f"{stitcher_service}/demo-consent/")
    await page.evaluate("s => stitcher('identify', s)", {"externalCustomerId": before,
                                                         "signature": backend_signs(before)})
    await page.evaluate("s => { stitcher('consent', true); stitcher('identify', s) }",
                        {"externalCustomerId": after, "signature": backend_signs(after)})
    await eventually(lambda: _now(answers), what="the identify's answer")
    assert [b["externalCustomerId"] for b in bodies] == [after]  # the page sent them in this order
    await eventually(lambda: contact_timeline(stitcher_service, after), within=30.0, what="the contact's page view")
    assert await api(stitcher_service, "/api/v1/contacts", externalCustomerId=before) == []


async def test_after_a_reset_identify_links_the_new_visitor_not_the_previous_ones_history(
        stitcher_service: str, page: Page, context: BrowserContext) -> None:
    """Logout on a shared computer (stitcher('reset')), then another person logs in: identify names the new
    visitor (with reset, so the collector takes it over the old cookie), and the earlier person's page views
    stay off the new contact's timeline."""
    old_vid, old_urls = await browse_anonymously(page, context, stitcher_service)
    bodies, _ = identify_requests(page)
    ext = f"C-{uuid.uuid4().hex[:10]}"
    await page.evaluate("s => { stitcher('reset'); stitcher('event', 'after_reset'); stitcher('flush');"
                        " stitcher('identify', s) }", {"externalCustomerId": ext, "signature": backend_signs(ext)})

    async def with_after_reset() -> list[dict[str, Any]] | None:
        timeline = await contact_timeline(stitcher_service, ext)
        return timeline if timeline and any(e["type"] == "after_reset" for e in timeline) else None

    events = await eventually(with_after_reset, within=30.0, what="the new visitor's event on the contact")
    assert bodies[0]["reset"] is True and bodies[0]["vid"] != old_vid
    assert {e["visitorId"] for e in events} == {bodies[0]["vid"]}
    history = await api(stitcher_service, f"/api/v1/visitor/{old_vid}/events")
    assert history["linkedContactId"] is None
    assert [e["url"] for e in history["events"]] == old_urls  # still anonymous, still the old visitor's
    assert not {e["id"] for e in events} & {e["id"] for e in history["events"]}
    assert [e["type"] for e in events] == ["after_reset"]
