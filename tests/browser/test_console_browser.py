"""The console (SPEC §4a) in headless Chromium: the Example 2 story, a merge, the overview, the key."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Page, Response
from playwright.async_api import Error as PlaywrightError

from stitcher.app import init_app
from stitcher.replay import load_fixture, replay
from tests.browser.conftest import API_KEY, LOOP, RedisProcess, bound_port
from tracker.edge.site import EdgeSite
from tracker.settings import Settings

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]
EXAMPLE_2 = Path(__file__).resolve().parent.parent / "fixtures" / "example2_web.jsonl"


@pytest_asyncio.fixture(loop_scope=LOOP)
async def stitcher_service(redis_server: RedisProcess, database_url: str, tmp_path: Path,
                           sqlite_threads_finished: None) -> AsyncIterator[str]:
    """The whole service (tracker, contacts API, worker, console) on a free port; yields its base URL."""
    settings = Settings(redis_url=redis_server.url, database_url=database_url, api_keys=(API_KEY,),
                        var_dir=tmp_path, import_parse_workers=0)
    runner = web.AppRunner(init_app(settings))
    await runner.setup()
    await EdgeSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{bound_port(runner)}"
    await runner.cleanup()


@pytest_asyncio.fixture(loop_scope=LOOP)
async def console(browser: Browser) -> AsyncIterator[Page]:
    """A page in a fresh profile that sends the API key (HTTP Basic) when the console asks for it."""
    ctx: BrowserContext = await browser.new_context(http_credentials={"username": "support", "password": API_KEY},
                                                    viewport={"width": 390, "height": 844})
    p = await ctx.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    yield p
    await ctx.close()
    assert not errors, f"uncaught errors in the page: {errors}"


async def _api(service: str, method: str, path: str, body: object) -> dict[str, object]:
    headers = {"Authorization": aiohttp.encode_basic_auth("backend", API_KEY)}
    async with aiohttp.ClientSession(headers=headers) as session, \
            session.request(method, service + path, json=body) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def _search(page: Page, service: str, text: str) -> None:
    await page.goto(f"{service}/console/")
    await page.fill("#q", text)
    await page.click("button[type=submit]")


async def test_example2_story_shows_the_anonymous_views_before_the_subscribe(stitcher_service: str,
                                                                             console: Page) -> None:
    """After Example 2, the contact's page lists the pre-subscription page views marked anonymous, with their
    visitor, before the subscribe's identity entry; searching by the email opens it with only the id in the URL."""
    run = secrets.token_hex(4)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        report = await replay(load_fixture(EXAMPLE_2), session, stitcher_service, API_KEY, variables={"run": run})
    assert report.ok, [str(f) for f in report.failures]
    await _search(console, stitcher_service, f"ann.{run}@example.com")
    await console.wait_for_url("**/console/contact/*")
    assert "@" not in console.url and run not in console.url
    entries = console.locator(".story .entry")
    kinds = await entries.evaluate_all(
        "els => els.map(e => e.dataset.kind + ':' + e.querySelector('.title').textContent)")
    assert kinds[:3] == ["anonymous:page_view"] * 3, kinds
    assert "identity:created" in kinds[3:] and "identity:linked_visitor" in kinds[3:], kinds
    # the later beacon is known (it arrived after the link), though its client dated it a second back
    assert "known:add_to_cart" in kinds[3:], kinds
    first = entries.nth(0)
    assert await first.locator(".badge").inner_text() == "anonymous"
    assert f"{run}-e2e2-4000-8000-000000000001" in await first.inner_text()
    assert await console.locator(".chart rect.anon").count() >= 1
    # the filter hides the anonymous part, and brings it back
    await console.uncheck("input[data-filter=anonymous]")
    assert not await entries.nth(0).is_visible()
    await console.check("input[data-filter=anonymous]")
    assert await entries.nth(0).is_visible()


async def test_a_merge_shows_in_the_identity_log_with_a_link(stitcher_service: str, console: Page) -> None:
    """The winner's identity log shows the merge; its link opens the merged contact, which links back."""
    loser = await _api(stitcher_service, "POST", "/api/v1/contact",
                       {"channels": [{"type": "email", "value": "merge.me@example.com"}]})
    winner = await _api(stitcher_service, "POST", "/api/v1/contact", {"externalCustomerId": "C-WIN"})
    await _api(stitcher_service, "POST", "/api/v1/contact",
               {"externalCustomerId": "C-WIN", "channels": [{"type": "email", "value": "merge.me@example.com"}]})
    await console.goto(f"{stitcher_service}/console/contact/{winner['id']}")
    row = console.locator(".identity-log tr[data-action=merged]")
    await row.locator("a.contact-link").click()
    await console.wait_for_url(f"**/console/contact/{loser['id']}")
    assert "Merged into" in await console.locator(".merged").inner_text()
    await console.locator(".merged a").click()
    await console.wait_for_url(f"**/console/contact/{winner['id']}")


async def test_the_pages_load_their_css_and_js_behind_the_key(stitcher_service: str, console: Page) -> None:
    """The static files are behind the key too: a browser that was given it loads them (the style applies,
    the script shows the story's filters), while a request without the key is a 401."""
    contact = await _api(stitcher_service, "POST", "/api/v1/contact", {"externalCustomerId": "C-STYLE"})
    statics: list[Response] = []
    console.on("response", lambda r: statics.append(r) if "/console/static/" in r.url else None)
    await console.goto(f"{stitcher_service}/console/contact/{contact['id']}")
    await console.wait_for_load_state("load")
    assert sorted((r.url.rsplit("/", 1)[1], r.status) for r in statics) == [("console.css", 200),
                                                                              ("console.js", 200)]
    background = await console.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(245, 247, 250)"
    assert await console.locator(".filters").is_visible()
    async with aiohttp.ClientSession() as session, session.get(f"{stitcher_service}/console/static/console.css") as r:
        assert r.status == 401


async def test_the_overview_shows_a_rejected_event(stitcher_service: str, console: Page) -> None:
    """A beacon event the collector refused is listed on the overview with its reason."""
    async with aiohttp.ClientSession() as session, session.post(f"{stitcher_service}/t", json={"events": [
            {"id": "refused-1", "type": "page_view", "url": 42}]}) as r:
        assert r.status == 204
    await console.goto(f"{stitcher_service}/console/overview")
    item = console.locator(".rejected li").first
    assert "url: must be a string" in await item.inner_text()
    assert "refused-1" in await item.inner_text()


async def test_without_the_key_the_console_asks_for_it(stitcher_service: str, browser: Browser) -> None:
    """Without credentials the browser gets a 401 that asks for HTTP Basic, and sees no data."""
    ctx = await browser.new_context()
    try:
        p = await ctx.new_page()
        answers: list[Response] = []
        p.on("response", lambda r: answers.append(r))
        # headless Chromium has nobody to ask: it gives the navigation up once it has seen the challenge
        with contextlib.suppress(PlaywrightError):
            await p.goto(f"{stitcher_service}/console/overview")
        assert answers and answers[0].status == 401
        assert (await answers[0].header_value("www-authenticate") or "").startswith("Basic")
        assert "Rejected" not in await answers[0].text()
    finally:
        await ctx.close()
