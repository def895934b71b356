"""static/t.js against a collector that fails: timeouts, Retry-After, answers the script cannot read."""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import pytest
from playwright.async_api import BrowserContext, Page

from tests.browser.fault_proxy import Answer, FaultProxy, event_types
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


async def _empty(page: Page) -> bool:
    return await stored_queue(page) == []


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


@pytest.mark.parametrize("status, form", [(429, "seconds"), (503, "HTTP date")])
async def test_retry_after_holds_across_a_navigation(page: Page, context: BrowserContext, api: Events,
                                                     proxy: FaultProxy, status: int, form: str) -> None:
    """A 429 or 503 with Retry-After (seconds or an HTTP date): no retry comes sooner, also from the next page
    of the site, then both page_views are stored once."""

    def throttle_first(body: dict[str, Any]) -> Answer | None:
        if proxy.batches():
            return None
        when = "3" if form == "seconds" else email.utils.formatdate(time.time() + 3.5, usegmt=True)  # ≥ 2.5 s
        return Answer(status, {"Retry-After": when})

    proxy.rule = throttle_first
    await page.goto(f"{proxy.site}/landing")
    await eventually(lambda: page.evaluate("!!localStorage.getItem('stitcher.w')"), what="the retry time")
    await page.goto(f"{proxy.site}/pricing")  # a new page, whose own page_view waits as well
    vid = await eventually(lambda: cookie_vid(context), within=15, what="the retried request")
    events = await eventually(lambda: _types_at_least(api, vid, 2), what="both page_views")
    assert sorted(e["url"] for e in events) == [f"{proxy.site}/landing", f"{proxy.site}/pricing"]
    first, second = proxy.batches()[:2]
    assert isinstance(first.fault, Answer) and first.fault.status == status and second.fault is None
    assert second.at - first.at >= 2.4
    await eventually(lambda: _empty(page), what="the queue to drain")
    assert len({e["id"] for x in proxy.batches() for e in x.body["events"]}) == 2


async def test_other_4xx_drops_the_batch(page: Page, api: Events, proxy: FaultProxy) -> None:
    """A readable 4xx other than 429 means the batch can never succeed: it leaves the queue, is not retried,
    and the next batch goes on."""
    proxy.rule = lambda body: Answer(400, {"Content-Type": "application/json"})
    await page.goto(f"{proxy.site}/landing")
    await eventually(lambda: _at_least(proxy.batches(), 1), what="the first attempt")
    await eventually(lambda: _empty(page), what="the batch to be dropped")
    await page.evaluate("stitcher('event', 'next')")
    await eventually(lambda: _at_least(proxy.batches(), 2), what="the next batch")
    await asyncio.sleep(2.5)  # longer than the first backoff step: no retry may come
    assert [x.types for x in proxy.batches()] == [["page_view"], ["next"]]
    assert await stored_queue(page) == []


@pytest.mark.parametrize("fault", ["drop", "stored_drop"])
async def test_a_connection_closed_without_an_answer_is_retried(page: Page, context: BrowserContext,
                                                                api: Events, proxy: FaultProxy,
                                                                fault: str) -> None:
    """The connection closes without a byte of answer, before the collector saw the batch ("drop") or after
    it stored it ("stored_drop"): the script sends the batch again and the collector holds each event once."""
    proxy.rule = lambda body: fault if not proxy.batches() else None
    await page.goto(f"{proxy.site}/landing")
    await page.evaluate("stitcher('event', 'clicked')")
    vid = await eventually(lambda: cookie_vid(context), what="the stitcher_vid cookie")
    events = await eventually(lambda: _types_at_least(api, vid, 2), within=15, what="both events")
    await eventually(lambda: _empty(page), what="the queue to drain")
    assert sorted(e["type"] for e in await api(vid)) == ["clicked", "page_view"]  # once each
    first, *later = proxy.batches()
    assert first.fault == fault and all(x.fault is None for x in later)
    assert {e["id"] for e in first.body["events"]} <= {e["id"] for x in later for e in x.body["events"]}
    assert {e["id"] for e in events} == {e["id"] for x in proxy.batches() for e in x.body["events"]}


async def test_an_answer_whose_body_is_cut_short_counts_as_delivered(page: Page, context: BrowserContext,
                                                                    api: Events, proxy: FaultProxy) -> None:
    """A 2xx whose body trickles in and then breaks off: the status is the answer, so the events leave the
    queue when the headers arrive and are not sent again when the body fails."""
    proxy.rule = lambda body: "truncated"
    await page.goto(f"{proxy.site}/landing")
    vid = await eventually(lambda: cookie_vid(context), what="the stitcher_vid cookie")
    await eventually(lambda: _at_least(proxy.batches(), 1), what="the first batch")
    await eventually(lambda: _empty(page), within=1.2, what="the queue to drain before the body ends")
    await eventually(lambda: _stored_vid_is(page, vid), what="the script to take the answer")
    await asyncio.sleep(3)  # the body broke off after 1.5 s; a retry would have come by now
    assert [x.types for x in proxy.batches()] == [["page_view"]]
    assert [e["type"] for e in await api(vid)] == ["page_view"]


async def _at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def test_a_403_without_cors_headers_is_bounded_and_blocks_nothing(
        page: Page, context: BrowserContext, api: Events, proxy: FaultProxy) -> None:
    """A real 403 answered without CORS headers (the browser rejects the fetch: no readable answer) for any
    batch holding a "poison" event: it is retried a few times only, alone once it has failed, and the events
    recorded with or after it are stored meanwhile."""
    refused = Answer(403, cors=False)
    proxy.rule = lambda body: refused if "poison" in event_types(body) else None
    await page.goto(f"{proxy.site}/landing")
    vid = await eventually(lambda: cookie_vid(context), what="the stitcher_vid cookie")
    await eventually(lambda: api(vid), what="the page_view")
    await eventually(lambda: _stored_vid_is(page, vid), what="the script to take the answer")

    def poisoned() -> list[list[str]]:
        return [x.types for x in proxy.batches() if x.fault == refused]

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
