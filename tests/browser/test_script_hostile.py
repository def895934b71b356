"""static/t.js in hostile pages and SPA routers: it never throws into the page and counts page views right."""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import Browser, BrowserContext, Page

from tests.browser.conftest import fresh_page
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


async def test_hash_routes(page: Page, context: BrowserContext, api: Events, service: str) -> None:
    """A hash route is one page view whether set through location.hash or a link; an anchor jump is none,
    also on a hash route, and coming back from it to the route is none either."""
    vid = await first_page_view(page, context, api, service)
    await page.evaluate("""() => {
      for (const [id, href] of [['tox', '#/x'], ['toy', '#/y'], ['toanswer', '#answer']]) {
        const a = document.body.appendChild(document.createElement('a'));
        Object.assign(a, {id, href, textContent: href});
      }
      document.body.appendChild(document.createElement('h2')).id = 'answer';
    }""")
    await page.evaluate("location.hash = '#/x'")
    await page.click("#toy")
    await page.click("#toanswer")
    await page.go_back()  # to #/y again
    await page.evaluate("location.hash = '#top'")  # an anchor with no element
    await page.evaluate("setTimeout(() => { stitcher('event', 'marker'); stitcher('flush') }, 50)")
    events = await eventually(lambda: _types_at_least(api, vid, 4), what="the marker")
    await asyncio.sleep(0.3)
    assert [(e["type"], e["url"]) for e in await api(vid)] == [
        ("page_view", f"{service}/demo/"), ("page_view", f"{service}/demo/#/x"),
        ("page_view", f"{service}/demo/#/y"), ("marker", f"{service}/demo/#top")]
    assert events[2]["ref"] == f"{service}/demo/#/x"


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


# Pages that patch JSON or fetch, each in a fresh profile of its own, all at once (they are independent)
BROKEN_JSON = "JSON.stringify = JSON.parse = function () { throw new Error('JSON broken by the page') };"
OBJECT_TO_JSON = "Object.prototype.toJSON = function () { return 'an object, as a library thought fit' };"
FETCH_WRAPPER = """const f = window.fetch; window.wrapped = 0;
window.fetch = function (input, init) { window.wrapped++; return f.call(this, input, init) };"""
FETCH_THROWS = """window.tries = 0;
window.fetch = function () { window.tries++; throw new TypeError('fetch blocked by the page') };"""


async def _hostile_case(browser: Browser, api: Events, service: str, init: str, after_load: str,
                        leave: bool) -> int:
    """Load the demo in a fresh profile with ``init`` run before the script and ``after_load`` after it, record
    an event, flush (six times: more than the bound of failures without an answer), and leave the page if
    ``leave``; check what the collector stored; return the page's count of wrapped fetch calls."""
    async with fresh_page(browser, init) as (context, page):
        await page.goto(f"{service}/demo/")
        await page.wait_for_function("window.stitcher && window.stitcher.ok")
        await page.evaluate(after_load + ";0")
        assert await page.evaluate("stitcher('event', 'clicked', {n: 1}); 'no exception'") == "no exception"
        for _ in range(6):
            await page.evaluate("stitcher('flush')")
            await asyncio.sleep(0.1)
        wrapped = await page.evaluate("window.wrapped || 0")
        if leave:
            await page.goto("about:blank")  # the pagehide beacon
        vid = await eventually(lambda: cookie_vid(context), what="the stitcher_vid cookie")
        events = await eventually(lambda: _types_at_least(api, vid, 2), what="both events")
        assert [(e["type"], e.get("props")) for e in events] == [("page_view", None), ("clicked", {"n": 1})]
        assert isinstance(events[0]["ts"], int)
        return int(wrapped)


async def test_pages_that_patch_json_or_fetch_get_no_exception(browser: Browser, api: Events,
                                                               service: str) -> None:
    """A page that replaces JSON after the script loaded (it keeps the JSON of load time), one with a toJSON
    on Object.prototype (set aside while the script serialises, like Array's), one that wraps fetch (its
    wrapper is used) and one whose fetch throws at once (no send counts against the events, and the pagehide
    beacon delivers them): nothing is thrown into the page and the collector stores each event once."""
    cases = [("", BROKEN_JSON, False), (OBJECT_TO_JSON, "", False), (FETCH_WRAPPER, "", False),
             (FETCH_THROWS, "", True)]
    wrapped = await asyncio.gather(*(_hostile_case(browser, api, service, init, after, leave)
                                     for init, after, leave in cases))
    assert wrapped[2] >= 1


async def test_a_page_whose_json_throws_from_the_start_gets_no_exception(page: Page, context: BrowserContext,
                                                                         service: str) -> None:
    """JSON broken before the script loads: it cannot serialise anything, so it records nothing, quietly — no
    exception from start-up, the calls, the timers, leaving the page or consent broadcast to another tab."""
    await page.add_init_script(BROKEN_JSON)
    await page.goto(f"{service}/demo/")
    await page.wait_for_function("window.stitcher && window.stitcher.ok")
    other = await context.new_page()
    await other.goto(f"{service}/demo/")
    assert await page.evaluate("""() => {
      stitcher('event', 'clicked'); stitcher('page'); stitcher('flush'); stitcher('reset');
      history.pushState({}, '', '/demo/next'); window.dispatchEvent(new Event('pagehide'));
      return 'no exception'
    }""") == "no exception"
    await other.evaluate("stitcher('consent', false); stitcher('consent', true)")
    await asyncio.sleep(1.5)  # the timers have run
    assert await cookie_vid(context) is None
