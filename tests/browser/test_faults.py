"""static/t.js against a collector that fails: timeouts, Retry-After, answers the script cannot read."""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page

from tests.browser.conftest import fresh_page
from tests.browser.fault_proxy import Answer, Fault, FaultProxy, event_types, fault_proxy
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


async def test_a_request_that_hangs_times_out_and_is_retried(browser: Browser, api: Events, service: str) -> None:
    """A request the collector never answers (a real one, held open by the proxy) is abandoned after a few
    seconds and its batch sent again, also in a browser older than AbortSignal.timeout (both at once, each
    behind a proxy of its own); the collector stores the page_view once."""

    async def case(init_script: str) -> None:
        async with fault_proxy(service) as proxy, fresh_page(browser, init_script) as (context, page):
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

    await asyncio.gather(case(""), case("delete AbortSignal.timeout"))


async def test_retry_after_holds_across_a_navigation(browser: Browser, api: Events, service: str) -> None:
    """A 429 with Retry-After in seconds and a 503 with it as an HTTP date (at once, each behind a proxy of its
    own): no retry comes sooner, also from the next page of the site, then both page_views are stored once."""

    async def case(status: int, form: str) -> None:
        async with fault_proxy(service) as proxy, fresh_page(browser) as (context, page):

            def throttle_first(body: dict[str, Any]) -> Answer | None:
                if proxy.batches():
                    return None
                when = "3" if form == "seconds" else email.utils.formatdate(time.time() + 3.5, usegmt=True)
                return Answer(status, {"Retry-After": when})  # a date in whole seconds: ≥ 2.5 s from now

            proxy.rule = throttle_first
            await page.goto(f"{proxy.site}/landing")
            await eventually(lambda: page.evaluate("!!localStorage.getItem('stitcher.w')"), what="the retry time")
            await page.goto(f"{proxy.site}/pricing")  # a new page, whose own page_view waits as well
            vid = await eventually(lambda: cookie_vid(context), within=15, what="the retried request")
            events = await eventually(lambda: _types_at_least(api, vid, 2), what="both page_views")
            assert sorted(e["url"] for e in events) == [f"{proxy.site}/landing", f"{proxy.site}/pricing"]
            first, second = proxy.batches()[:2]
            assert isinstance(first.fault, Answer) and first.fault.status == status and second.fault is None
            assert second.at - first.at >= 2.4, form
            await eventually(lambda: _empty(page), what="the queue to drain")
            assert len({e["id"] for x in proxy.batches() for e in x.body["events"]}) == 2

    await asyncio.gather(case(429, "seconds"), case(503, "HTTP date"))


async def test_other_4xx_drops_the_batch(page: Page, api: Events, proxy: FaultProxy) -> None:
    """A readable 4xx other than 429 means the batch can never succeed: it leaves the queue, is not retried,
    and the next batch goes on."""
    proxy.rule = lambda body: Answer(400, {"Content-Type": "application/json"})
    await page.goto(f"{proxy.site}/landing")
    await eventually(lambda: _at_least(proxy.batches(), 1), what="the first attempt")
    await eventually(lambda: _empty(page), what="the batch to be dropped")
    await page.evaluate("stitcher('event', 'next')")
    await eventually(lambda: _at_least(proxy.batches(), 2), what="the next batch")
    await asyncio.sleep(1.5)  # longer than the first backoff step (0.5-1 s): no retry may come
    assert [x.types for x in proxy.batches()] == [["page_view"], ["next"]]
    assert await stored_queue(page) == []


async def test_a_connection_closed_without_an_answer_is_retried(browser: Browser, api: Events,
                                                                service: str) -> None:
    """The connection closes without a byte of answer, before the collector saw the batch ("drop") or after
    it stored it ("stored_drop"; both at once, each behind a proxy of its own): the script sends the batch
    again and the collector holds each event once."""

    async def case(fault: Fault) -> None:
        async with fault_proxy(service) as proxy, fresh_page(browser) as (context, page):
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

    await asyncio.gather(case("drop"), case("stored_drop"))


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
    # the body broke off 1.5 s after the headers; a retry after that would have come within a second
    await asyncio.sleep(proxy.batches()[0].at + 2.8 - asyncio.get_running_loop().time())
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


async def test_a_request_failing_across_a_reset_keeps_its_events_with_the_old_visitor(
        page: Page, context: BrowserContext, api: Events, proxy: FaultProxy) -> None:
    """An event in flight when the page resets, whose request then fails without an answer: it is still the
    old visitor's, and is sent (first) under the old id; what follows the reset goes to the new visitor."""
    await page.goto(f"{proxy.site}/landing")
    old = await eventually(lambda: cookie_vid(context), what="the stitcher_vid cookie")
    await eventually(lambda: _stored_vid_is(page, old), what="the script to take the answer")
    proxy.rule = lambda body: "hang" if "before" in event_types(body) and not proxy.release.is_set() else None
    await page.evaluate("stitcher('event', 'before'); stitcher('flush')")
    await eventually(lambda: _at_least([x for x in proxy.batches() if x.fault == "hang"], 1), what="the hang")
    await page.evaluate("stitcher('reset'); stitcher('event', 'after')")
    proxy.release.set()  # the hung request ends without a readable answer

    async def after_stored() -> list[dict[str, Any]]:
        await page.evaluate("stitcher('flush')")  # past the backoff
        return [e for e in await api(await cookie_vid(context) or old) if e["type"] == "after"]

    await eventually(after_stored, what="the event after the reset")
    await eventually(lambda: _empty(page), what="the queue to drain")
    new = await cookie_vid(context)
    assert new and new != old
    assert [e["type"] for e in await api(old)] == ["page_view", "before"]
    assert [e["type"] for e in await api(new)] == ["after"]
    # the script's bookkeeping (the pre-reset visitor, the failure count) never goes on the wire
    sent = [e for x in proxy.batches() for e in x.body.get("events", [])]
    assert all(set(e) <= {"id", "type", "ts", "url", "props", "ref", "title"} for e in sent)
    # the reset's marker is removed once its 30 s are over
    await page.evaluate("localStorage.setItem('stitcher.rs', Date.now() - 31e3);"
                        "stitcher('event', 'later'); stitcher('flush')")
    await eventually(lambda: _types_at_least(api, new, 2), what="the later event")
    assert await page.evaluate("localStorage.getItem('stitcher.rs')") is None
