"""static/t.js storage bounds and storage failures: what the collector stores in the end."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page

from tests.browser.conftest import fresh_page
from tests.browser.test_tracking_script import (
    Events,
    cookie_vid,
    eventually,
    first_page_view,
    stored_queue,
)

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]


async def _with_type(api: Events, vid: str, event_type: str, n: int) -> list[dict[str, Any]] | None:
    events = [e for e in await api(vid) if e["type"] == event_type]
    return events if len(events) >= n else None


async def test_events_waiting_for_consent_keep_the_newest_500(page: Page, context: BrowserContext, api: Events,
                                                               service: str) -> None:
    """Before consent, events wait in memory, at most 500: the newest, as in the retry queue."""
    await page.goto(f"{service}/demo-consent/")
    await page.evaluate("for (let i = 0; i < 600; i++) stitcher('event', 'held', {i})")
    await page.evaluate("stitcher('consent', true)")
    vid = await eventually(lambda: cookie_vid(context), what="the stitcher_vid cookie")
    events = await eventually(lambda: _with_type(api, vid, "held", 500), what="the held events", within=20)
    assert sorted(e["props"]["i"] for e in events) == list(range(100, 600))
    assert "page_view" not in [e["type"] for e in await api(vid)]  # the oldest, recorded on load


# 4 props of 600 "€": 2400 UTF-16 units but 7200 UTF-8 bytes per event
BIG = ("i => stitcher('event', 'big',"
       " {i, a: '€'.repeat(600), b: '€'.repeat(600), c: '€'.repeat(600), d: '€'.repeat(600)})")


async def test_the_queue_bound_counts_utf8_bytes(page: Page, context: BrowserContext, api: Events,
                                                 service: str) -> None:
    """The ~256 KB bound of the queue is in UTF-8 bytes: 60 events of ~7.3 KB (~2.5 K characters) do not
    all fit; the newest are kept and delivered."""
    vid = await first_page_view(page, context, api, service)
    await page.evaluate("localStorage.setItem('stitcher.w', Date.now() + 6e5)")  # hold automatic sends
    await page.evaluate(f"for (let i = 0; i < 60; i++) ({BIG})(i)")
    queue = await stored_queue(page)
    kept = [e["props"]["i"] for e in queue]
    assert kept == list(range(60 - len(kept), 60))
    assert 30 <= len(kept) <= 36
    await page.evaluate("stitcher('flush')")
    events = await eventually(lambda: _with_type(api, vid, "big", len(kept)), what="the kept events", within=20)
    assert sorted(e["props"]["i"] for e in events) == kept


async def test_storage_that_starts_throwing_falls_back_to_memory(browser: Browser, api: Events,
                                                                 service: str) -> None:
    """localStorage methods throwing after load (quota, privacy mode): getItem, setItem, both, or setItem and
    removeItem (each case at once, in a profile of its own): the script keeps its queue in memory and keeps
    sending."""

    async def case(methods: list[str]) -> None:
        async with fresh_page(browser) as (context, page):
            vid = await first_page_view(page, context, api, service)
            await page.evaluate("""methods => {
              const no = () => { throw new DOMException('full', 'QuotaExceededError') };
              for (const m of methods) Storage.prototype[m] = no;
              stitcher('event', 'after', {n: 0});
              stitcher('flush');
            }""", methods)
            await eventually(lambda: _with_type(api, vid, "after", 1), what="the first event after the failure")
            await page.evaluate("stitcher('event', 'after', {n: 1}); stitcher('flush')")
            events = await eventually(lambda: _with_type(api, vid, "after", 2), what="the second event")
            assert sorted(e["props"]["n"] for e in events) == [0, 1], methods

    await asyncio.gather(*(case(m) for m in (["getItem", "setItem"], ["getItem"], ["setItem"],
                                             ["setItem", "removeItem"])))
