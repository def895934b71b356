"""Browser-test fixtures: a private Redis, the real tracker service in-process, headless Chromium.

The Redis server belongs to this module's tests alone and listens on a unix socket of its own, so a test can
stop it (the collector then answers 503) and start it again where the service's client will find it (a TCP
port could be handed to another process while the server is down).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import redis
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from tests.browser.fault_proxy import FaultProxy, fault_proxy
from tests.conftest import private_redis
from tracker.app import init_app
from tracker.edge.site import EdgeSite
from tracker.embedded_redis import EmbeddedRedis
from tracker.settings import Settings

API_KEY = "test-key"
CHROMIUM = "/usr/bin/chromium"
HAVE_CHROMIUM = os.path.exists(CHROMIUM)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class RedisProcess(EmbeddedRedis):
    """The service's own embedded redis-server on a unix socket: stop() and start() keep that address."""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def flush(self) -> None:
        client = redis.Redis.from_url(self.url)
        try:
            client.flushall()
        finally:
            client.close()


@pytest.fixture(scope="module")
def module_redis() -> Iterator[RedisProcess]:
    with private_redis(RedisProcess) as server:
        server.start()
        yield server


@pytest.fixture
def redis_server(module_redis: RedisProcess) -> RedisProcess:
    """The module's Redis, running (a previous test may have stopped it) and empty."""
    if not module_redis.running:
        module_redis.start()
    module_redis.flush()
    return module_redis


# One event loop per module: Chromium is launched once per module, not per test (it takes seconds).
# The tests opt in with ``pytest.mark.asyncio(loop_scope="module")``.
LOOP = "module"


@pytest_asyncio.fixture(loop_scope=LOOP)
async def service(redis_server: RedisProcess, tmp_path: Path) -> AsyncIterator[str]:
    """The tracker service on a free local port, run in the test's event loop; yields its base URL."""
    settings = Settings(redis_url=redis_server.url, api_keys=(API_KEY,), allowed_origins=("*",),
                        var_dir=tmp_path)
    runner = web.AppRunner(init_app(settings))
    await runner.setup()
    await EdgeSite(runner, "127.0.0.1", 0).start()  # as `stitcher serve` listens; the port the OS picks as it binds
    yield f"http://127.0.0.1:{bound_port(runner)}"
    await runner.cleanup()


def bound_port(runner: web.AppRunner) -> int:
    """The port of a runner's one TCP site, started on port 0."""
    (address,) = runner.addresses
    return int(address[1])


@pytest_asyncio.fixture(loop_scope=LOOP)
async def proxy(service: str) -> AsyncIterator[FaultProxy]:
    """A fault-injecting proxy in front of the collector, and a page on a third origin posting through it."""
    async with fault_proxy(service) as p:
        yield p


@pytest_asyncio.fixture(scope="module", loop_scope=LOOP)
async def browser() -> AsyncIterator[Browser]:
    """Headless Debian Chromium (never a downloaded browser), shared by the module's tests."""
    if not HAVE_CHROMIUM and not os.environ.get("CI"):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (CI installs it and never skips)")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        await b.close()


@pytest_asyncio.fixture(loop_scope=LOOP)
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh profile per test: no cookies, no localStorage."""
    ctx = await browser.new_context()
    yield ctx
    await ctx.close()


@pytest_asyncio.fixture(loop_scope=LOOP)
async def page(context: BrowserContext) -> AsyncIterator[Page]:
    """A page of ``context``; an uncaught script error in it fails the test instead of hiding in the console."""
    p = await context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    yield p
    assert not errors, f"uncaught errors in the page: {errors}"


@asynccontextmanager
async def fresh_page(browser: Browser, init_script: str = "") -> AsyncIterator[tuple[BrowserContext, Page]]:
    """A page in a profile of its own (no cookies, no storage), for independent cases run at once within one
    test; ``init_script`` runs before each document's scripts; an uncaught script error fails the test."""
    ctx = await browser.new_context()
    try:
        p = await ctx.new_page()
        errors: list[str] = []
        p.on("pageerror", lambda exc: errors.append(str(exc)))
        if init_script:
            await p.add_init_script(init_script)
        yield ctx, p
        assert not errors, f"uncaught errors in the page: {errors}"
    finally:
        await ctx.close()


@pytest_asyncio.fixture(loop_scope=LOOP)
async def api(service: str) -> AsyncIterator[Callable[[str], Awaitable[list[dict[str, Any]]]]]:
    """``await api(vid)``: the visitor's recorded events from /api/v1/visitor/{vid}/events ([] if unknown)."""
    headers = {"Authorization": aiohttp.encode_basic_auth("backend", API_KEY)}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def events(vid: str) -> list[dict[str, Any]]:
            async with session.get(f"{service}/api/v1/visitor/{vid}/events") as r:
                if r.status == 404:
                    return []
                assert r.status == 200, await r.text()
                body = await r.json()
                assert body["visitorId"] == vid
                return list(body["events"])

        yield events

