"""static/t.js across several tabs of one browser (SPEC §2): one visitor id, every event stored once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import BrowserContext, Page

from tests.browser.fault_proxy import Answer, Fault, FaultProxy, event_types
from tests.browser.test_tracking_script import (
    Events,
    RedisProcess,
    cookie_vid,
    eventually,
    stored_queue,
)

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

Tabs = Callable[[int], Awaitable[list[Page]]]


@pytest_asyncio.fixture(loop_scope="module")
async def tabs(context: BrowserContext) -> AsyncIterator[Tabs]:
    """``await tabs(n)``: n new pages of the test's browser context; an uncaught script error in any fails
    the test."""
    errors: list[str] = []

    async def open_tabs(n: int) -> list[Page]:
        pages = [await context.new_page() for _ in range(n)]
        for p in pages:
            p.on("pageerror", lambda exc: errors.append(str(exc)))
        return pages

    yield open_tabs
    assert not errors, f"uncaught errors in the pages: {errors}"


# each tab records n events, one every few milliseconds, all tabs at the same time
BURST = """([tab, n]) => new Promise(done => {
  let i = 0;
  const fire = () => { stitcher('event', 'burst', {tab, i}); ++i < n ? setTimeout(fire, 3) : done() };
  fire();
})"""


async def burst(pages: list[Page], n: int) -> set[tuple[int, int]]:
    await asyncio.gather(*(p.evaluate(BURST, [k, n]) for k, p in enumerate(pages)))
    return {(k, i) for k in range(len(pages)) for i in range(n)}


async def landed(api: Events, vid: str, n: int) -> list[dict[str, Any]] | None:
    events = await api(vid)
    return events if len(events) >= n else None


def assert_once(events: list[dict[str, Any]], bursts: set[tuple[int, int]], page_views: int) -> None:
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids))
    assert sum(e["type"] == "page_view" for e in events) == page_views
    got = [(e["props"]["tab"], e["props"]["i"]) for e in events if e["type"] == "burst"]
    assert sorted(got) == sorted(bursts)


async def open_all(pages: list[Page], url: str) -> None:
    await asyncio.gather(*(p.goto(url) for p in pages))


async def known_visitor(pages: list[Page], context: BrowserContext, api: Events, url: str) -> str:
    """Open ``url`` in the first tab, wait until its visitor is known, then in the others; return the id."""
    await pages[0].goto(url)
    vid = await eventually(lambda: cookie_vid(context), what="the stitcher_vid cookie")
    await eventually(lambda: landed(api, vid, 1), what="the first page_view")
    await open_all(pages[1:], url)
    await eventually(lambda: landed(api, vid, len(pages)), what="the page_views")
    return vid


async def all_vids(pages: list[Page]) -> set[str]:
    return {await p.evaluate("localStorage.getItem('stitcher.vid')") for p in pages}


async def one_vid_in_every_tab(pages: list[Page], vid: str) -> bool:
    return await all_vids(pages) == {vid}


async def queues_empty(pages: list[Page]) -> bool:
    return all([await stored_queue(p) == [] for p in pages])


async def test_four_tabs_loading_at_once_make_one_visitor(tabs: Tabs, context: BrowserContext, api: Events,
                                                          service: str) -> None:
    """A first visit in four tabs at once: one visitor id, shared by every tab, with all four page_views."""
    pages = await tabs(4)
    await open_all(pages, f"{service}/demo/")
    vid = await eventually(lambda: cookie_vid(context), what="the stitcher_vid cookie")
    events = await eventually(lambda: landed(api, vid, 4), what="four page_views under one visitor")
    assert_once(events, set(), 4)
    await eventually(lambda: one_vid_in_every_tab(pages, vid), what="the same vid in every tab")
    assert await cookie_vid(context) == vid


@pytest.mark.parametrize("locks", ["web_locks", "lease"])
async def test_tabs_recording_at_once_lose_nothing(tabs: Tabs, context: BrowserContext, api: Events,
                                                   service: str, locks: str) -> None:
    """Four tabs recording events at nearly the same time: each event is stored exactly once, with Web Locks
    or, where there are none (insecure contexts, old browsers), the lease in localStorage."""
    if locks == "lease":
        await context.add_init_script("delete Navigator.prototype.locks")
    pages = await tabs(4)
    if locks == "lease":
        assert await pages[0].evaluate("navigator.locks") is None
    vid = await known_visitor(pages, context, api, f"{service}/demo/")
    fired = await burst(pages, 30)
    await pages[0].evaluate("stitcher('flush')")
    events = await eventually(lambda: landed(api, vid, 4 + len(fired)), what="every event", within=20)
    assert_once(events, fired, 4)
    await eventually(lambda: queues_empty(pages), what="the queue to drain")
    assert_once(await api(vid), fired, 4)


async def test_tabs_wait_out_an_outage_together(tabs: Tabs, context: BrowserContext, api: Events, service: str,
                                                redis_server: RedisProcess) -> None:
    """With the collector down, events of three tabs wait in the shared queue and land exactly once after."""
    pages = await tabs(3)
    vid = await known_visitor(pages, context, api, f"{service}/demo/")
    statuses: list[int] = []
    for p in pages:
        p.on("response", lambda r: statuses.append(r.status) if r.url.endswith("/t") else None)
    await asyncio.to_thread(redis_server.stop)
    fired = await burst(pages, 10)
    await pages[1].evaluate("stitcher('flush')")
    await eventually(lambda: _has(statuses, 503), what="a 503")
    assert len(await stored_queue(pages[2])) == len(fired)
    await asyncio.to_thread(redis_server.start)  # empty again
    events = await eventually(lambda: landed(api, vid, len(fired)), what="every event", within=20)
    await eventually(lambda: queues_empty(pages), what="the queue to drain")
    assert_once(await api(vid), fired, 0)
    assert len(events) == len(fired)


async def _has(items: list[int], value: int) -> bool:
    return value in items


async def stitcher_keys(page: Page) -> list[str]:
    return list(await page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('stitcher.')).sort()"))


@pytest.mark.parametrize("channel", ["broadcast", "storage_event"])
async def test_consent_withdrawn_in_one_tab_stops_every_tab(tabs: Tabs, context: BrowserContext, api: Events,
                                                            service: str, channel: str) -> None:
    """consent(false) in one tab: every open tab stops at once (BroadcastChannel, else the storage event),
    what the script stored is gone, and the collector expires the HttpOnly visitor cookie."""
    if channel == "storage_event":
        await context.add_init_script("window.Channel = window.BroadcastChannel; delete window.BroadcastChannel")
    a, b = pages = await tabs(2)
    vid = await known_visitor(pages, context, api, f"{service}/demo/")
    # the other tab hears of it through the same channel the script listens on
    await b.evaluate("window.heard = 0; if (window.Channel)"
                     " addEventListener('storage', e => window.heard = +(e.key == 'stitcher.c'));"
                     "else new BroadcastChannel('stitcher').onmessage = () => window.heard = 1")
    await b.evaluate("stitcher('event', 'queued_before')")
    await a.evaluate("stitcher('consent', false)")
    await eventually(lambda: b.evaluate("window.heard"), what="the other tab to hear")
    await b.evaluate("stitcher('event', 'after'); stitcher('page'); stitcher('flush')")
    await b.click("#spa-nav")
    assert await stitcher_keys(b) == ["stitcher.c"]  # an event recorded in b would be a key of its own
    assert await b.evaluate("localStorage.getItem('stitcher.c')") == "0"
    await eventually(lambda: _no_cookie(context), what="the collector to expire the cookie")
    await b.reload()
    assert await stitcher_keys(b) == ["stitcher.c"]
    assert [e["type"] for e in await api(vid)] == ["page_view", "page_view"]


async def _no_cookie(context: BrowserContext) -> bool:
    return await cookie_vid(context) is None


async def test_reset_in_one_tab_applies_to_every_tab(tabs: Tabs, context: BrowserContext, api: Events,
                                                     service: str) -> None:
    """After reset in one tab, an event of another tab goes to the new visitor, not the old one."""
    a, b = pages = await tabs(2)
    old = await known_visitor(pages, context, api, f"{service}/demo/")
    await a.evaluate("stitcher('reset')")
    await b.evaluate("stitcher('event', 'in_b'); stitcher('flush')")
    new = await eventually(lambda: _new_cookie(context, old), what="a new visitor cookie")
    assert [e["type"] for e in await eventually(lambda: api(new), what="in_b")] == ["in_b"]
    await eventually(lambda: one_vid_in_every_tab(pages, new), what="the new vid in every tab")
    assert [e["type"] for e in await api(old)] == ["page_view", "page_view"]


async def _new_cookie(context: BrowserContext, old: str) -> str | None:
    vid = await cookie_vid(context)
    return vid if vid and vid != old else None


async def test_retry_after_holds_for_every_tab(tabs: Tabs, context: BrowserContext, api: Events,
                                               proxy: FaultProxy) -> None:
    """A Retry-After answered to one tab holds the other tabs back as well."""
    a, b = pages = await tabs(2)
    vid = await known_visitor(pages, context, api, f"{proxy.site}/landing")
    proxy.rule = lambda body: Answer(429, {"Retry-After": "3"}) if "in_a" in event_types(body) else None
    await a.evaluate("stitcher('event', 'in_a'); stitcher('flush')")
    await eventually(lambda: a.evaluate("!!localStorage.getItem('stitcher.w')"), what="the retry time")
    proxy.rule = lambda body: None
    await b.evaluate("stitcher('event', 'in_b')")  # no flush: its timer must wait as well
    events = await eventually(lambda: landed(api, vid, 4), what="both events")
    assert sorted(e["type"] for e in events[2:]) == ["in_a", "in_b"]
    throttled = next(x for x in proxy.batches() if x.fault)
    assert all(x.at - throttled.at >= 2.9 for x in proxy.batches() if x.at > throttled.at)


async def test_a_late_answer_from_another_tab_does_not_undo_a_reset(tabs: Tabs, context: BrowserContext,
                                                                    api: Events, proxy: FaultProxy) -> None:
    """Tab b leaves the site while its pagehide beacon, sent under the old visitor, is held by the proxy (the
    collector has stored it); tab a resets and records; the held answer then arrives and sets the cookie back
    to the old id. Tab a's next events still go to the new visitor, and the cookie follows."""
    a, b = pages = await tabs(2)
    old = await known_visitor(pages, context, api, f"{proxy.site}/landing")

    def hold_first_bye(body: dict[str, Any]) -> Fault:
        held = any(x.fault == "hold" for x in proxy.batches())
        return "hold" if "bye" in event_types(body) and not held else None

    proxy.rule = hold_first_bye
    await b.evaluate("stitcher('event', 'bye')")
    await b.goto("about:blank")  # the pagehide beacon carries 'bye' under the old id
    await eventually(lambda: _held(proxy), what="the beacon to be held")
    await a.evaluate("stitcher('reset'); stitcher('event', 'after_reset'); stitcher('flush')")
    new = await eventually(lambda: _new_cookie(context, old), what="the new visitor's cookie")
    proxy.release_held.set()
    await eventually(lambda: _cookie_is(context, old), what="the late answer to set the old cookie back")
    await a.evaluate("stitcher('event', 'later'); stitcher('flush')")
    events = await eventually(lambda: landed(api, new, 2), what="the later event under the new visitor")
    assert [e["type"] for e in events] == ["after_reset", "later"]
    assert sorted(e["type"] for e in await api(old)) == ["bye", "page_view", "page_view"]
    assert await cookie_vid(context) == new
    assert await a.evaluate("localStorage.getItem('stitcher.vid')") == new


async def _held(proxy: FaultProxy) -> bool:
    return any(x.fault == "hold" for x in proxy.batches())


async def _cookie_is(context: BrowserContext, vid: str) -> bool:
    return await cookie_vid(context) == vid
