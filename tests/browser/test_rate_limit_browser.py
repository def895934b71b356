"""static/t.js against the collector's own rate limit: a 429 with Retry-After is waited out, then the batch lands
exactly once."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import BrowserContext, Page, Response

from tests.browser.conftest import API_KEY, LOOP, RedisProcess, bound_port
from tests.browser.test_tracking_script import cookie_vid, eventually
from tracker.app import init_app
from tracker.edge.site import EdgeSite
from tracker.rates import parse_rate
from tracker.settings import Settings

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]
REFILL_SECONDS = 6  # one beacon, then one every this many seconds


@pytest_asyncio.fixture(loop_scope=LOOP)
async def limited_service(redis_server: RedisProcess, tmp_path: Path) -> AsyncIterator[str]:
    """The collector (the edge in front, as `stitcher serve`) allowing one beacon per REFILL_SECONDS a client."""
    settings = Settings(redis_url=redis_server.url, api_keys=(API_KEY,), var_dir=tmp_path,
                        rate_limit_track=parse_rate(f"1/{REFILL_SECONDS}s"))
    runner = web.AppRunner(init_app(settings))
    await runner.setup()
    await EdgeSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{bound_port(runner)}"
    await runner.cleanup()


async def test_a_rate_limited_batch_waits_out_retry_after_and_lands_once(
        page: Page, context: BrowserContext, limited_service: str) -> None:
    """The page_view takes the client's one token; the next batch is answered 429 with Retry-After, the script
    sends it again no sooner than that, and the collector stores each event exactly once."""
    answers: list[tuple[float, int, str | None, list[str]]] = []  # (when, status, Retry-After, event ids)

    def on_response(response: Response) -> None:
        request = response.request
        if request.method == "POST" and request.url.endswith("/t"):
            ids = [e["id"] for e in json.loads(request.post_data or "{}").get("events", [])]
            answers.append((time.monotonic(), response.status, response.headers.get("retry-after"), ids))

    page.on("response", on_response)
    await page.goto(f"{limited_service}/demo/")
    vid = await eventually(lambda: cookie_vid(context), what="the stitcher_vid cookie")
    await eventually(lambda: _statuses(answers, [204]), what="the page_view's 204")
    await page.evaluate("stitcher('event', 'after_limit', {n: 1})")
    await eventually(lambda: _statuses(answers, [204, 429, 204]), within=REFILL_SECONDS * 5,
                     what=f"the 429 and the retry's 204 ({answers})")
    (_, _, _, first), (limited_at, _, retry_after, refused), (retried_at, _, _, retried) = answers[:3]
    assert retry_after is not None and retry_after.isdigit() and 1 <= int(retry_after) <= REFILL_SECONDS
    assert retried_at - limited_at >= int(retry_after) - 0.3  # Playwright's clock, not the browser's
    assert retried == refused
    headers = {"Authorization": aiohttp.encode_basic_auth("backend", API_KEY)}
    async with (aiohttp.ClientSession(headers=headers) as session,
                session.get(f"{limited_service}/api/v1/visitor/{vid}/events") as r):
        assert r.status == 200, await r.text()
        events = (await r.json())["events"]
    assert sorted(e["type"] for e in events) == ["after_limit", "page_view"]
    assert sorted(e["id"] for e in events) == sorted(first + refused)
    assert len(answers) == 3  # nothing sent twice after the retry


async def _statuses(answers: list[tuple[float, int, str | None, list[str]]], want: list[int]) -> bool:
    return [status for _, status, _, _ in answers] == want
