"""static/t.js in headless Chromium against the real tracker service (SPEC §2)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import BrowserContext, Page, Request, Route

from tests.browser.conftest import bound_port

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

T = TypeVar("T")
Events = Callable[[str], Awaitable[list[dict[str, Any]]]]


class RedisProcess(Protocol):
    """The conftest's private redis-server."""

    def stop(self) -> None: ...

    def start(self) -> None: ...


async def eventually(check: Callable[[], Awaitable[T]], within: float = 10.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what} (last: {result!r})")
        await asyncio.sleep(0.1)


async def cookie_vid(context: BrowserContext) -> str | None:
    """The visitor id in the collector's HttpOnly ``stitcher_vid`` cookie, if the browser holds one."""
    for c in await context.cookies():
        if c["name"] == "stitcher_vid":
            return str(c["value"])
    return None


async def stored_queue(page: Page) -> list[dict[str, Any]]:
    """The script's persistent retry queue in localStorage (one key per event, shared by the tabs), oldest
    first."""
    return list(await page.evaluate(QUEUE_JS))


QUEUE_JS = """Object.keys(localStorage).filter(k => k.startsWith('stitcher.e.'))
    .map(k => JSON.parse(localStorage.getItem(k))).sort((a, b) => a.ts - b.ts)"""


async def first_page_view(page: Page, context: BrowserContext, api: Events, base: str) -> str:
    """Open the demo, wait until its page_view is stored and the script has taken the answer; return the
    visitor id.

    The collector stores the event (and the browser holds the cookie) before the script's fetch resolves;
    only then does the script drop the batch from its queue and keep the echoed id, in one step. Until it
    has, the page_view is still queued and in flight, which the next step of a test must not see.
    """
    await page.goto(f"{base}/demo/")
    vid = await eventually(lambda: cookie_vid(context), what="the stitcher_vid cookie")
    await eventually(lambda: api(vid), what="the first page_view")
    await eventually(lambda: _stored_vid_is(page, vid), what="the script to take the answer")
    return vid


def beacons(page: Page) -> list[dict[str, Any]]:
    """Bodies of the POST /t requests the page sends from now on (fetch and sendBeacon alike)."""
    sent: list[dict[str, Any]] = []

    def on_request(request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/t"):
            sent.append(json.loads(request.post_data or "{}"))

    page.on("request", on_request)
    return sent


async def body_with(sent: list[dict[str, Any]], event_type: str) -> dict[str, Any]:
    """The first recorded body carrying an event of ``event_type``, once Playwright has reported it.

    The service answers in this process while Playwright's request events arrive through its driver, so
    a stored event can be visible in the API before the test has heard of the request that carried it.
    """

    async def find() -> dict[str, Any] | None:
        return next((b for b in sent if any(e["type"] == event_type for e in b["events"])), None)

    return await eventually(find, what=f"a request carrying {event_type}")


async def test_demo_page_view_is_recorded_under_cookie_visitor(page: Page, context: BrowserContext,
                                                               api: Events, service: str) -> None:
    """Loading the demo records a page_view under the visitor id of the stitcher_vid cookie."""
    sent = beacons(page)
    vid = await first_page_view(page, context, api, service)
    events = await api(vid)
    assert [(e["type"], e["url"]) for e in events] == [("page_view", f"{service}/demo/")]
    event = events[0]
    assert event["title"] == "Stitcher demo"
    assert event["ts"] <= event["received_at"] + 5_000
    # the script mirrors the echoed id and shows it on the page
    assert await page.evaluate("localStorage.getItem('stitcher.vid')") == vid
    assert await eventually(lambda: _text_is(page, "#vid", vid), what="the vid on the page")
    first = await body_with(sent, "page_view")
    assert first["events"][0]["id"] == event["id"]
    assert first["vid"] == vid  # the script made the id before its first send; the collector took it
    assert await stored_queue(page) == []


async def _text_is(page: Page, selector: str, text: str) -> bool:
    return await page.text_content(selector) == text


async def test_spa_navigation_records_a_second_page_view_once(page: Page, context: BrowserContext,
                                                              api: Events, service: str) -> None:
    """A pushState navigation records one more page_view; the same URL is never recorded twice in a row."""
    vid = await first_page_view(page, context, api, service)
    await page.click("#spa-nav")
    # neither re-setting the current URL nor a fragment jump is a new page view
    await page.evaluate("history.replaceState({}, '', location.href); history.pushState({}, '', '#top')")
    await page.evaluate("stitcher('flush')")
    await eventually(lambda: _types_at_least(api, vid, 2), what="the SPA page_view")
    await asyncio.sleep(1.5)  # past the batching delay: nothing else may arrive
    events = await api(vid)
    assert [(e["type"], e["url"]) for e in events] == [
        ("page_view", f"{service}/demo/"), ("page_view", f"{service}/demo/spa-1")]
    # the back button (popstate): leaving the fragment is not a page view, returning to /demo/ is
    await page.go_back()
    await page.go_back()
    assert await page.evaluate("location.pathname") == "/demo/"
    events = await eventually(lambda: _types_at_least(api, vid, 3), what="the popstate page_view")
    assert [e["url"] for e in events] == [f"{service}/demo/", f"{service}/demo/spa-1", f"{service}/demo/"]
    spa = events[1]
    assert spa["ref"] == f"{service}/demo/"  # the previous route, not the document's referrer
    assert spa["title"] == "Stitcher demo: SPA page 1"  # read after the router changed the title


async def _types_at_least(api: Events, vid: str, n: int) -> list[dict[str, Any]] | None:
    events = await api(vid)
    return events if len(events) >= n else None


async def test_custom_event_carries_its_props(page: Page, context: BrowserContext,
                                              api: Events, service: str) -> None:
    """stitcher('event', name, props) stores the event with its props under the same visitor."""
    vid = await first_page_view(page, context, api, service)
    await page.click("#signup")
    events = await eventually(lambda: _types_at_least(api, vid, 2), what="signup_click")
    assert events[1]["type"] == "signup_click"
    assert events[1]["props"] == {"plan": "pro"}
    assert events[1]["url"] == f"{service}/demo/"
    assert "ref" not in events[1] and "title" not in events[1]


async def test_calls_made_before_load_are_replayed_in_order(page: Page, context: BrowserContext,
                                                            api: Events, service: str) -> None:
    """Calls queued by the loader snippet before t.js arrives are sent once it runs, after the page_view; a
    stitcher('page') among them is that page_view, not a second one."""
    release = asyncio.Event()

    async def slow_script(route: Route) -> None:
        await release.wait()
        await route.continue_()

    await page.route("**/t.js", slow_script)
    await page.goto(f"{service}/demo/", wait_until="domcontentloaded")
    queued = await page.evaluate(
        "stitcher('page'); stitcher('event', 'early', {n: 1}); stitcher('event', 'early', {n: 2}); stitcher.q.length")
    assert queued == 3
    release.set()
    vid = await eventually(lambda: cookie_vid(context), what="the stitcher_vid cookie")
    events = await eventually(lambda: _types_at_least(api, vid, 3), what="the replayed events")
    assert [(e["type"], e.get("props")) for e in events] == [
        ("page_view", None), ("early", {"n": 1}), ("early", {"n": 2})]


async def test_events_wait_out_an_outage_and_land_exactly_once(
        page: Page, context: BrowserContext, api: Events, service: str, redis_server: RedisProcess) -> None:
    """While the collector answers 503 events stay in localStorage (across a reload) and land once after."""
    vid = await first_page_view(page, context, api, service)
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if r.url.endswith("/t") else None)
    await asyncio.to_thread(redis_server.stop)

    for n in range(3):
        await page.evaluate(f"stitcher('event', 'during_outage', {{n: {n}}})")
    await page.evaluate("stitcher('flush')")
    await eventually(lambda: _count(statuses, 503, 1), what="a 503 from the collector")
    queued = await stored_queue(page)
    assert [e["props"] for e in queued] == [{"n": 0}, {"n": 1}, {"n": 2}]

    # a reload keeps them: the next page resends them together with its own page_view
    await page.reload()
    await page.evaluate("stitcher('flush')")
    await eventually(lambda: _count(statuses, 503, 2), what="a second 503")
    queued = await stored_queue(page)
    assert [e["type"] for e in queued] == ["during_outage"] * 3 + ["page_view"]
    ids = [e["id"] for e in queued]

    await asyncio.to_thread(redis_server.start)  # empty again: --save "" keeps nothing
    # no explicit flush: the backoff timer retries by itself
    await eventually(lambda: _types_at_least(api, vid, 4), within=15, what="recovery")
    await eventually(lambda: _empty_queue(page), what="the queue to drain")
    await page.evaluate("stitcher('flush')")
    await asyncio.sleep(1.5)
    events = await api(vid)
    stored_ids = [e["id"] for e in events]
    assert sorted(stored_ids) == sorted(ids)  # each exactly once
    assert 204 in statuses


async def _count(items: list[int], value: int, n: int, also: int | None = None) -> bool:
    return items.count(value) + (items.count(also) if also is not None else 0) >= n


async def _empty_queue(page: Page) -> bool:
    return await stored_queue(page) == []


@pytest.mark.parametrize("leave", ["close", "navigate"])
async def test_pagehide_flush_arrives(page: Page, context: BrowserContext, api: Events, service: str,
                                      leave: str) -> None:
    """An event fired just before the page goes away is delivered by the pagehide beacon."""
    vid = await first_page_view(page, context, api, service)
    await page.evaluate("stitcher('event', 'goodbye', {via: 'beacon'})")
    ids = [e["id"] for e in await stored_queue(page)]
    assert len(ids) == 1  # still queued: the batching delay has not passed
    if leave == "close":
        await page.close(run_before_unload=True)
    else:
        await page.goto("about:blank")  # a page without the script: only the beacon can deliver it
    events = await eventually(lambda: _types_at_least(api, vid, 2), what="the beacon")
    assert [e["id"] for e in events][1:] == ids
    assert events[1]["props"] == {"via": "beacon"}


async def test_pagehide_without_send_beacon_uses_a_keepalive_fetch(page: Page, context: BrowserContext,
                                                                    api: Events, service: str) -> None:
    """Where navigator.sendBeacon is missing, the pagehide flush goes by fetch(keepalive), which outlives the
    page as a beacon does."""
    await page.add_init_script("delete Navigator.prototype.sendBeacon; delete navigator.sendBeacon")
    vid = await first_page_view(page, context, api, service)
    assert await page.evaluate("!navigator.sendBeacon")
    await page.evaluate("stitcher('event', 'goodbye', {via: 'keepalive'})")
    ids = [e["id"] for e in await stored_queue(page)]
    assert len(ids) == 1  # still queued: the batching delay has not passed
    await page.goto("about:blank")  # a page without the script: only the pagehide request can deliver it
    events = await eventually(lambda: _types_at_least(api, vid, 2), what="the keepalive fetch")
    assert [e["id"] for e in events][1:] == ids
    assert events[1]["props"] == {"via": "keepalive"}


async def test_consent_required_sends_and_stores_nothing_until_granted(
        page: Page, context: BrowserContext, api: Events, service: str) -> None:
    """With data-consent-required nothing is sent or stored until consent(true); then the held events go."""
    sent = beacons(page)
    await page.goto(f"{service}/demo-consent/")
    await page.click("#signup")
    await asyncio.sleep(1.5)  # past the batching delay
    assert sent == []
    assert await cookie_vid(context) is None
    assert await page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('stitcher.'))") == []

    await page.click("#accept")
    vid = await eventually(lambda: cookie_vid(context), what="the stitcher_vid cookie")
    events = await eventually(lambda: _types_at_least(api, vid, 2), what="the held events")
    assert [e["type"] for e in events] == ["page_view", "signup_click"]
    # stored and answered before the script's fetch resolves and it keeps the echoed id
    await eventually(lambda: _stored_vid_is(page, vid), what="the vid in localStorage")


async def test_consent_withdrawn_drops_queue_and_stops_sending(
        page: Page, context: BrowserContext, api: Events, service: str) -> None:
    """consent(false) drops the queue and the stored visitor id and stops sending, also after a reload."""
    vid = await first_page_view(page, context, api, service)
    await page.click("#signup")
    await page.evaluate("stitcher('consent', false)")
    sent = beacons(page)
    assert await stored_queue(page) == []
    assert await page.evaluate("localStorage.getItem('stitcher.vid')") is None
    await page.click("#signup")
    await page.reload()
    await page.click("#spa-nav")
    await asyncio.sleep(1.5)
    assert sent == []
    assert [e["type"] for e in await api(vid)] == ["page_view"]


async def test_reset_starts_a_new_visitor(page: Page, context: BrowserContext, api: Events,
                                          service: str) -> None:
    """After reset the next batch gets a new visitor id (cookie and localStorage); old history stays put, and
    what was recorded before the reset is sent first, under the old id."""
    old = await first_page_view(page, context, api, service)
    sent = beacons(page)
    await page.evaluate("stitcher('event', 'before_reset'); stitcher('reset'); stitcher('event', 'after_reset');"
                        "stitcher('flush')")
    new = await eventually(lambda: _new_cookie(context, old), what="a new stitcher_vid cookie")
    await eventually(lambda: _stored_vid_is(page, new), what="the new vid in localStorage")
    assert [e["type"] for e in await eventually(lambda: api(new), what="the new history")] == ["after_reset"]
    assert [e["type"] for e in await api(old)] == ["page_view", "before_reset"]
    before = await body_with(sent, "before_reset")
    assert before["vid"] == old and "reset" not in before and len(before["events"]) == 1
    first = await body_with(sent, "after_reset")
    assert first.get("reset") is True and first["vid"] == new
    assert sent.index(before) < sent.index(first)
    # a late answer to a request sent before the reset puts the old cookie back: the new id still wins
    await context.add_cookies([{"name": "stitcher_vid", "value": old, "url": service}])
    await page.click("#signup")
    await eventually(lambda: _types_at_least(api, new, 2), what="signup_click under the new visitor")
    later = await body_with(sent, "signup_click")
    assert later["vid"] == new
    assert await cookie_vid(context) == new
    assert await page.evaluate("localStorage.getItem('stitcher.vid')") == new
    assert [e["type"] for e in await api(old)] == ["page_view", "before_reset"]


async def test_reset_before_the_first_send_keeps_the_earlier_events_with_the_cookie_visitor(
        page: Page, context: BrowserContext, api: Events, service: str) -> None:
    """The script's storage was cleared (Safari's 7-day cap on script storage) while the collector's cookie
    stayed: a reset before the script's first send still sends what was recorded before it to the cookie's
    visitor, and what follows to a new one."""
    old = str(uuid.uuid4())
    await context.add_cookies([{"name": "stitcher_vid", "value": old, "url": service}])
    await page.goto(f"{service}/demo/")
    await page.evaluate("stitcher('event', 'before'); stitcher('reset'); stitcher('event', 'after');"
                        "stitcher('flush')")
    new = await eventually(lambda: _new_cookie(context, old), what="a new stitcher_vid cookie")
    assert [e["type"] for e in await eventually(lambda: api(new), what="the new history")] == ["after"]
    assert [e["type"] for e in await api(old)] == ["page_view", "before"]


async def _new_cookie(context: BrowserContext, old: str) -> str | None:
    vid = await cookie_vid(context)
    return vid if vid and vid != old else None


async def _stored_vid_is(page: Page, vid: str) -> bool:
    return bool(await page.evaluate("localStorage.getItem('stitcher.vid')") == vid)


async def test_works_without_local_storage_or_random_uuid(page: Page, context: BrowserContext, api: Events,
                                                          service: str) -> None:
    """Without localStorage (private mode) the script keeps its queue in memory; without
    crypto.randomUUID (plain http) it builds v4 UUIDs from crypto.getRandomValues."""
    await page.add_init_script(
        "Object.defineProperty(window, 'localStorage',"
        " {get() { throw new DOMException('denied', 'SecurityError') }});"
        "delete Crypto.prototype.randomUUID;")
    await page.goto(f"{service}/demo/")
    vid = await eventually(lambda: cookie_vid(context), what="the stitcher_vid cookie")
    await page.click("#signup")
    events = await eventually(lambda: _types_at_least(api, vid, 2), what="both events")
    assert [e["type"] for e in events] == ["page_view", "signup_click"]
    for e in events:
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", e["id"])


SITE_PAGE = """<!doctype html><title>Another site</title>
<script>window.stitcher=window.stitcher||function(){(stitcher.q=stitcher.q||[]).push(arguments)};</script>
<script async src="%s/t.js"></script><h1>another origin</h1>"""


@pytest_asyncio.fixture(loop_scope="module")
async def site(service: str) -> AsyncIterator[str]:
    """A page on another origin (another port) that loads the tracker from the service."""
    app = web.Application()

    async def page_handler(request: web.Request) -> web.Response:
        return web.Response(text=SITE_PAGE % service, content_type="text/html")

    app.router.add_get("/{tail:.*}", page_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{bound_port(runner)}"
    await runner.cleanup()


async def test_cross_origin_page_is_tracked(page: Page, context: BrowserContext, api: Events, service: str,
                                            site: str) -> None:
    """On another origin the script posts to its own origin and reads X-Stitcher-Visitor through CORS."""
    await page.goto(f"{site}/landing")
    vid = await eventually(lambda: cookie_vid(context), what="the stitcher_vid cookie")
    events = await eventually(lambda: api(vid), what="the page_view")
    assert [(e["type"], e["url"]) for e in events] == [("page_view", f"{site}/landing")]
    await eventually(lambda: _stored_vid_is(page, vid), what="the vid from X-Stitcher-Visitor")


async def test_cross_origin_page_can_read_a_503(page: Page, context: BrowserContext, api: Events,
                                                service: str, site: str, redis_server: RedisProcess) -> None:
    """During an outage a cross-origin page gets a readable 503 (CORS headers present), and the events land
    once Redis is back."""
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if r.url.endswith("/t") else None)
    page.on("requestfailed", lambda r: statuses.append(0) if r.url.endswith("/t") else None)
    await page.goto(f"{site}/landing")
    vid = await eventually(lambda: cookie_vid(context), what="the stitcher_vid cookie")
    await eventually(lambda: api(vid), what="the page_view")

    await asyncio.to_thread(redis_server.stop)
    await page.evaluate("stitcher('event', 'during_outage'); stitcher('flush')")
    await eventually(lambda: _count(statuses, 503, 1, also=0), what="a failed request")
    await asyncio.to_thread(redis_server.start)
    await page.evaluate("stitcher('flush')")
    events = await eventually(lambda: api(vid), what="the held event")
    assert [e["type"] for e in events] == ["during_outage"]
    assert not [m for m in console if "CORS" in m], console
    assert 0 not in statuses
