"""static/t.js in hostile pages and SPA routers: it never throws into the page and counts page views right."""

from __future__ import annotations

import pytest
from playwright.async_api import BrowserContext, Page

from tests.browser.test_tracking_script import (
    Events,
    _types_at_least,
    cookie_vid,
    eventually,
    first_page_view,
)

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

HOSTILE = """
Object.prototype.vid = 'polluted'; Object.prototype.e = 'polluted';
Array.prototype.toJSON = function () { return 'an array, Prototype.js style' };
window.Blob = function () { throw new Error('Blob replaced') };
navigator.sendBeacon = function () { throw new Error('sendBeacon throws') };
Object.freeze(history);
"""


async def test_a_hostile_page_gets_no_exception_and_events_land(page: Page, context: BrowserContext,
                                                                 api: Events, service: str) -> None:
    """A polluted Object.prototype, Prototype's Array.prototype.toJSON, a replaced Blob, a throwing sendBeacon
    and a frozen history: nothing is thrown into the page (the fixture fails the test on any uncaught
    error) and the events are stored as sent."""
    await page.add_init_script(HOSTILE)
    await page.goto(f"{service}/demo/")
    vid = await eventually(lambda: cookie_vid(context), what="the stitcher_vid cookie")
    await page.evaluate("stitcher('event', 'tagged', {tags: ['a', 'b']}); window.dispatchEvent(new Event('pagehide'));"
                        "stitcher('flush')")
    events = await eventually(lambda: _types_at_least(api, vid, 2), what="both events")
    assert [e["type"] for e in events] == ["page_view", "tagged"]
    assert events[1]["props"] == {"tags": ["a", "b"]}
    assert await page.evaluate("localStorage.getItem('stitcher.vid')") == vid


async def test_spa_rules(page: Page, context: BrowserContext, api: Events, service: str) -> None:
    """A hash route is a page view; a replaceState that only strips the query is not; stitcher('page')
    always records one."""
    await page.goto(f"{service}/demo/?utm_source=news")
    vid = await eventually(lambda: cookie_vid(context), what="the stitcher_vid cookie")
    await page.evaluate("history.replaceState({}, '', '/demo/')")  # the page strips its utm_ parameters
    await page.evaluate("stitcher('page')")
    await page.evaluate("location.hash = '#/pricing'")
    await eventually(lambda: _types_at_least(api, vid, 3), what="three page_views")
    await page.evaluate("stitcher('event', 'marker'); stitcher('flush')")
    events = await eventually(lambda: _types_at_least(api, vid, 4), what="the marker")
    assert [(e["type"], e["url"]) for e in events] == [
        ("page_view", f"{service}/demo/?utm_source=news"), ("page_view", f"{service}/demo/"),
        ("page_view", f"{service}/demo/#/pricing"), ("marker", f"{service}/demo/#/pricing")]


async def test_pagehide_on_a_first_visit_while_the_first_request_is_in_flight(
        page: Page, context: BrowserContext, api: Events, service: str) -> None:
    """Leaving a first visit while its first request is still in flight: the beacon goes at once, under the
    same visitor id as that request."""
    await page.goto(f"{service}/demo/")
    await page.evaluate("stitcher('flush'); stitcher('event', 'bye')")
    await page.goto("about:blank")  # a page without the script: only the beacon can deliver 'bye'
    vid = await eventually(lambda: cookie_vid(context), what="the stitcher_vid cookie")
    events = await eventually(lambda: _types_at_least(api, vid, 2), what="both events")
    assert sorted(e["type"] for e in events) == ["bye", "page_view"]


async def test_flush_sends_at_once(page: Page, context: BrowserContext, api: Events, service: str) -> None:
    """stitcher('flush') sends what is queued without waiting for the batching delay."""
    vid = await first_page_view(page, context, api, service)
    await page.evaluate("stitcher('event', 'now'); stitcher('flush')")
    events = await eventually(lambda: _types_at_least(api, vid, 2), within=0.9, what="the flushed event")
    assert events[1]["type"] == "now"
