"""A fault-injecting HTTP proxy in front of the collector, run in the test's event loop on 127.0.0.1.

The tracking script reaches it through ``data-endpoint``, so a fault is a real HTTP exchange the browser
handles as it would in production (a 403 without CORS headers is rejected by the browser's CORS check, a
request that never gets an answer is abandoned by the script's own timeout), not a Playwright route.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

# what a rule returns for a request body: None (forward it), "hang" (never answer) or a status to answer
# with, without any CORS header
Rule = Callable[[dict[str, Any]], "str | int | None"]

HOP = {"host", "content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}

PAGE = """<!doctype html><title>Behind a proxy</title>
<script>window.stitcher=window.stitcher||function(){(stitcher.q=stitcher.q||[]).push(arguments)};</script>
<script async src="%s/t.js" data-endpoint="%s/t"></script><h1>another origin, endpoint behind a proxy</h1>"""


@dataclass
class Exchange:
    """One request the proxy received: when (loop time), the parsed body, and what the proxy did."""

    at: float
    path: str
    body: dict[str, Any]
    fault: str | int | None

    @property
    def types(self) -> list[str]:
        return [e.get("type") for e in self.body.get("events", [])]


@dataclass
class FaultProxy:
    upstream: str  # the collector's base URL
    url: str = ""  # the proxy's base URL, once started
    site: str = ""  # base URL of a page on a third origin whose script posts to the proxy
    rule: Rule = lambda body: None
    seen: list[Exchange] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends every hanging request

    def batches(self) -> list[Exchange]:
        """The requests to /t (batches), in arrival order."""
        return [x for x in self.seen if x.path == "/t"]

    async def handle(self, request: web.Request, session: aiohttp.ClientSession) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        fault = self.rule(body) if request.path == "/t" else None
        self.seen.append(Exchange(asyncio.get_running_loop().time(), request.path, body, fault))
        if fault == "hang":
            await self.release.wait()
            return web.Response(status=504)
        if isinstance(fault, int):
            return web.Response(status=fault, text="refused by the proxy")  # no CORS headers
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with session.request(request.method, self.upstream + request.rel_url.path_qs, headers=headers,
                                   data=raw, allow_redirects=False) as r:
            out = web.Response(status=r.status, body=await r.read())
            for k, v in r.headers.items():
                if k.lower() not in HOP:
                    out.headers.add(k, v)
            return out


@asynccontextmanager
async def fault_proxy(upstream: str) -> AsyncIterator[FaultProxy]:
    """A started proxy to ``upstream`` (port 0: the OS picks a free one) and a page that uses it."""
    proxy = FaultProxy(upstream)
    runners: list[web.AppRunner] = []
    async with aiohttp.ClientSession() as session:

        async def start(app: web.Application) -> str:
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            runners.append(runner)
            (address,) = runner.addresses
            return f"http://127.0.0.1:{address[1]}"

        async def forward(request: web.Request) -> web.StreamResponse:
            return await proxy.handle(request, session)

        async def page(request: web.Request) -> web.Response:
            return web.Response(text=PAGE % (upstream, proxy.url), content_type="text/html")

        papp = web.Application()
        papp.router.add_route("*", "/{tail:.*}", forward)
        proxy.url = await start(papp)
        sapp = web.Application()
        sapp.router.add_get("/{tail:.*}", page)
        proxy.site = await start(sapp)
        try:
            yield proxy
        finally:
            proxy.release.set()
            for runner in runners:
                await runner.cleanup()
