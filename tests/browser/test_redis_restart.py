"""static/t.js in headless Chromium while the collector's redis-server is stopped and started again: the
page sees 503s (never a 500), keeps its events, and every event lands exactly once once Redis is back."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Page, Response

from tests.browser.conftest import RedisProcess
from tests.browser.test_tracking_script import Events, _types_at_least, eventually, first_page_view, stored_queue
from tests.conftest import private_redis

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]


class DurableRedis(RedisProcess):
    """The module's redis-server with an append-only file: a stop (SIGTERM flushes it) and a start keep what
    was stored, as a production Redis with persistence does."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, persistent=True)


@pytest.fixture(scope="module")
def module_redis() -> Iterator[RedisProcess]:
    """Overrides the conftest's: this module's Redis keeps its data across a restart."""
    with private_redis(DurableRedis) as server:
        server.start()
        yield server


async def test_every_event_lands_once_across_a_redis_restart(page: Page, context: BrowserContext, api: Events,
                                                             service: str, redis_server: RedisProcess) -> None:
    """Redis stops after the first page view; 20 events recorded meanwhile get 503s and wait in the page's
    queue; Redis starts again and the script's own retries deliver them: each event stored once, the page
    view from before kept, no 500 ever seen by the page."""
    statuses: list[int] = []

    def on_response(response: Response) -> None:
        if response.request.method == "POST" and response.url.endswith("/t"):
            statuses.append(response.status)

    page.on("response", on_response)
    vid = await first_page_view(page, context, api, service)

    await asyncio.to_thread(redis_server.stop)
    await page.evaluate("""() => new Promise(done => { let i = 0; const timer = setInterval(() => {
        stitcher('event', 'during_outage', {n: i});
        if (++i === 20) { clearInterval(timer); stitcher('flush'); done(); } }, 50); })""")
    await eventually(lambda: _saw(statuses, 503), what="a 503 answered to the page")
    assert len(await stored_queue(page)) == 20  # kept in the page for the retries
    await asyncio.sleep(1.0)
    await asyncio.to_thread(redis_server.start)

    events = await eventually(lambda: _types_at_least(api, vid, 21), within=60, what="every event after the restart")
    await eventually(lambda: _empty(page), what="the queue to drain")
    events = await api(vid)
    assert Counter(e["type"] for e in events) == {"page_view": 1, "during_outage": 20}
    assert sorted(e["props"]["n"] for e in events if e["type"] == "during_outage") == list(range(20))
    assert len({e["id"] for e in events}) == 21
    assert 503 in statuses and 500 not in statuses, statuses
    assert statuses[-1] == 204


async def _saw(statuses: list[int], status: int) -> bool:
    return status in statuses


async def _empty(page: Page) -> bool:
    return await stored_queue(page) == []
