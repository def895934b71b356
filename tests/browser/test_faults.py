"""static/t.js against a collector that fails: timeouts, Retry-After, answers the script cannot read."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import BrowserContext, Page, Route

from tests.browser.fault_proxy import FaultProxy, fault_proxy
from tests.browser.test_tracking_script import (
    Events,
    _stored_vid_is,
    _types_at_least,
    cookie_vid,
    eventually,
    first_page_view,
    stored_queue,
)

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]


def types_in(route: Route) -> list[str]:
    return [e["type"] for e in json.loads(route.request.post_data or "{}").get("events", [])]


async def _empty(page: Page) -> bool:
    return await stored_queue(page) == []


@pytest_asyncio.fixture(loop_scope="module")
async def proxy(service: str) -> AsyncIterator[FaultProxy]:
    """A fault-injecting proxy in front of the collector, and a page on a third origin posting through it."""
    async with fault_proxy(service) as p:
        yield p


@pytest.mark.parametrize("browser_api", ["current", "without AbortSignal.timeout"])
async def test_a_request_that_hangs_times_out_and_is_retried(page: Page, context: BrowserContext, api: Events,
                                                            proxy: FaultProxy, browser_api: str) -> None:
    """A request the collector never answers (a real one, held open by the proxy) is abandoned after a few
    seconds and its batch sent again, also in a browser older than AbortSignal.timeout; the collector stores
    the page_view once."""
    if browser_api != "current":
        await page.add_init_script("delete AbortSignal.timeout")
    proxy.rule = lambda body: "hang" if len(proxy.batches()) == 0 else None
    await page.goto(f"{proxy.site}/landing")
    vid = await eventually(lambda: cookie_vid(context), within=15, what="the retried request")
    events = await eventually(lambda: api(vid), what="the page_view")
    assert [(e["type"], e["url"]) for e in events] == [("page_view", f"{proxy.site}/landing")]
    first, second = proxy.batches()[:2]
    assert first.fault == "hang" and second.fault is None
    assert [e["id"] for e in first.body["events"]] == [e["id"] for e in second.body["events"]]
    assert 4 < second.at - first.at < 8
    await eventually(lambda: _empty(page), what="the queue to drain")
    assert len(proxy.batches()) == 2


async def test_retry_after_as_a_date_holds_across_a_navigation(page: Page, context: BrowserContext,
                                                               api: Events, service: str) -> None:
    """A 503 with Retry-After as an HTTP date: the next page of the site waits for it too, then all lands."""
    loop = asyncio.get_running_loop()
    attempts: list[float] = []

    async def unavailable_first(route: Route) -> None:
        attempts.append(loop.time())
        if len(attempts) == 1:
            when = email.utils.formatdate(time.time() + 3.5, usegmt=True)  # whole seconds: ≥ 2.5 s from now
            await route.fulfill(status=503, headers={"Retry-After": when}, body="")
        else:
            await route.continue_()

    await page.route("**/t", unavailable_first)
    await page.goto(f"{service}/demo/")
    await eventually(lambda: _at_least(attempts, 1), what="the first attempt")
    await eventually(lambda: page.evaluate("!!localStorage.getItem('stitcher.w')"), what="the retry time")
    await page.goto(f"{service}/demo/pricing")  # a new page, whose own page_view waits as well
    vid = await eventually(lambda: cookie_vid(context), within=15, what="the retried request")
    events = await eventually(lambda: _types_at_least(api, vid, 2), what="both page_views")
    assert sorted(e["url"] for e in events) == [f"{service}/demo/", f"{service}/demo/pricing"]
    assert attempts[1] - attempts[0] >= 2.4


async def _at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def test_a_403_without_cors_headers_is_bounded_and_blocks_nothing(
        page: Page, context: BrowserContext, api: Events, proxy: FaultProxy) -> None:
    """A real 403 answered without CORS headers (the browser rejects the fetch: no readable answer) for any
    batch holding a "poison" event: it is retried a few times only, alone once it has failed, and the events
    recorded with or after it are stored meanwhile."""
    proxy.rule = lambda body: 403 if any(e.get("type") == "poison" for e in body.get("events", [])) else None
    await page.goto(f"{proxy.site}/landing")
    vid = await eventually(lambda: cookie_vid(context), what="the stitcher_vid cookie")
    await eventually(lambda: api(vid), what="the page_view")
    await eventually(lambda: _stored_vid_is(page, vid), what="the script to take the answer")

    def poisoned() -> list[list[str]]:
        return [x.types for x in proxy.batches() if x.fault == 403]

    # in one batch with good events, then more good ones behind it
    await page.evaluate("stitcher('event', 'good', {n: 0}); stitcher('event', 'poison');"
                        "stitcher('event', 'good', {n: 1}); stitcher('flush')")
    await eventually(lambda: _at_least(poisoned(), 1), what="the first refusal")
    await page.evaluate("stitcher('event', 'good', {n: 2})")
    for _ in range(8):  # flush skips the backoff; more attempts than the bound allows
        if await _empty(page):
            break
        n = len(poisoned())
        await page.evaluate("stitcher('flush')")
        await eventually(lambda n=n: _sent_or_empty(page, poisoned(), n), what="another attempt")
    await eventually(lambda: _empty(page), what="the poison to be given up")
    events = await api(vid)
    assert sorted(e["props"]["n"] for e in events if e["type"] == "good") == [0, 1, 2]
    assert "poison" not in [e["type"] for e in events]
    assert poisoned()[0] == ["good", "poison", "good"]
    assert poisoned()[1:] == [["poison"]] * 4  # alone once it had failed; 5 failures in all


async def _sent_or_empty(page: Page, poisoned: list[list[str]], n: int) -> bool:
    return len(poisoned) > n or await _empty(page)


async def test_malformed_strings_are_made_well_formed(page: Page, context: BrowserContext, api: Events,
                                                     service: str) -> None:
    """A lone surrogate from the page becomes U+FFFD and a cut title keeps its surrogate pairs whole, so the
    batch (and the good events in it) is stored rather than refused as invalid UTF-8."""
    vid = await first_page_view(page, context, api, service)
    await page.evaluate("""() => {
      stitcher('event', 'before');
      stitcher('event', 'lone\\ud800', {s: 'x\\udc00y\\ud83d', ok: 'ok\\ud83d\\ude00'});
      document.title = 'a'.repeat(679) + '\\ud83d\\ude00';
      history.pushState({}, '', '/demo/long');
      setTimeout(() => { stitcher('event', 'after'); stitcher('flush') }, 10);
    }""")
    events = await eventually(lambda: _types_at_least(api, vid, 5), what="every event")
    by_type = {e["type"]: e for e in events}
    assert [e["type"] for e in events] == ["page_view", "before", "lone\ufffd", "page_view", "after"]
    assert by_type["lone\ufffd"]["props"] == {"s": "x\ufffdy\ufffd", "ok": "ok\U0001f600"}
    assert events[3]["title"] == "a" * 679  # the pair that did not fit is left out whole
