"""A fault-injecting HTTP proxy in front of the collector, run in the test's event loop on 127.0.0.1.

The tracking script reaches it through ``data-endpoint``, so a fault is a real HTTP exchange the browser
handles as it would in production (a 403 without CORS headers is rejected by the browser's CORS check, a
request that never gets an answer is abandoned by the script's own timeout, a closed connection is a network
error), not a Playwright route. Tests count what the collector stored through the visitor-events API.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from aiohttp import web

HOP = {"host", "content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}


@dataclass(frozen=True)
class Answer:
    """An answer the proxy gives instead of forwarding: a status and headers, with the collector's CORS
    headers (the script can read it, Retry-After included) or, with ``cors=False``, none (a firewall's
    refusal: the browser reports a network error)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    cors: bool = True


# What a rule returns for a request body:
#   None        forward it and pass the collector's answer back
#   "hang"      no answer until ``release`` is set, then a 504 without CORS headers (to the script, a network
#               error); nothing reaches the collector
#   "drop"      close the connection without an answer; nothing reaches the collector
#   "stored_drop"  forward it (the collector stores the events), then close the connection without an answer
#   "hold"      forward it, then keep the collector's answer until ``release_held`` is set
#   "truncated" forward it, then answer the collector's status and headers as a 200 whose body is cut short
#               after a slow start (Content-Length promises more than is ever sent)
#   Answer(...) answer with that status and headers
Fault = Literal["hang", "drop", "stored_drop", "hold", "truncated"] | Answer | None
Rule = Callable[[dict[str, Any]], Fault]

PAGE = """<!doctype html><title>Behind a proxy</title>
<script>window.stitcher=window.stitcher||function(){(stitcher.q=stitcher.q||[]).push(arguments)};</script>
<script async src="%s/t.js" data-endpoint="%s/t"></script><h1>another origin, endpoint behind a proxy</h1>"""


@dataclass
class Exchange:
    """One request the proxy received: when (loop time), the parsed body, and what the proxy did."""

    at: float
    path: str
    body: dict[str, Any]
    fault: Fault

    @property
    def types(self) -> list[str]:
        return event_types(self.body)


def event_types(body: dict[str, Any]) -> list[str]:
    """The event types of a batch body."""
    return [e.get("type") for e in body.get("events", [])]


@dataclass
class FaultProxy:
    upstream: str  # the collector's base URL
    url: str = ""  # the proxy's base URL, once started
    site: str = ""  # base URL of a page on a third origin whose script posts to the proxy
    rule: Rule = lambda body: None
    seen: list[Exchange] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends every hanging request
    release_held: asyncio.Event = field(default_factory=asyncio.Event)  # lets held answers go

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
        if fault == "drop":
            return _drop(request)
        if isinstance(fault, Answer):
            out = web.Response(status=fault.status, text="answered by the proxy", headers=fault.headers)
            if fault.cors:
                _cors(request, out)
            return out
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with session.request(request.method, self.upstream + request.rel_url.path_qs, headers=headers,
                                   data=raw, allow_redirects=False) as r:
            status, answer = r.status, await r.read()
            kept = [(k, v) for k, v in r.headers.items() if k.lower() not in HOP]
        if fault == "stored_drop":
            return _drop(request)
        if fault == "hold":
            await self.release_held.wait()
        if fault == "truncated":
            return await _truncated(request, 200 if status == 204 else status, kept)
        out = web.Response(status=status, body=answer)
        for k, v in kept:
            out.headers.add(k, v)
        return out


def _cors(request: web.Request, response: web.StreamResponse) -> None:
    """The collector's CORS headers: the page may read the status, X-Stitcher-Visitor and Retry-After."""
    response.headers["Access-Control-Allow-Origin"] = request.headers.get("Origin", "*")
    response.headers["Access-Control-Allow-Credentials"] = "true"
    response.headers["Access-Control-Expose-Headers"] = "X-Stitcher-Visitor, Retry-After"


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection without a byte of answer (the browser sees a network error)."""
    assert request.transport is not None
    request.transport.abort()
    return web.Response(status=500)  # never sent: the connection is gone


async def _truncated(request: web.Request, status: int, headers: list[tuple[str, str]]) -> web.StreamResponse:
    """The status and headers at once, then a body that starts slowly and stops short of its length."""
    out = web.StreamResponse(status=status)
    for k, v in headers:
        out.headers.add(k, v)
    out.content_length = 4096
    await out.prepare(request)
    for _ in range(3):
        await out.write(b"x" * 16)
        await asyncio.sleep(0.5)
    assert request.transport is not None
    request.transport.abort()
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
            proxy.release_held.set()
            for runner in runners:
                await runner.cleanup()
