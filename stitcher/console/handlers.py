"""The console (SPEC §4a): server-rendered pages behind the API key for looking at one person's story.

Every page checks the API key as the API does (``check_access``: HTTP Basic, an API key holding ``admin``) and
answers an error as an HTML page with the status the API would give it; a 401 carries
``WWW-Authenticate: Basic`` so a browser asks for the key. No personal data goes into a URL: the search is a
POST whose single hit redirects to ``/console/contact/{id}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from stitcher import jsonbody, views
from stitcher.console import search, story
from stitcher.console.throughput import SERIES, SharedMinutes, read_counters
from stitcher.domain.errors import ContactNotFound
from stitcher.http_input import DB, NORMALISER, keyset_after, path_contact_id
from stitcher.store import console as store
from tracker.errors import NotFound, ValidationFailed
from tracker.http import METRICS, check_access, error_status
from tracker.routes import EVENTLOG
from tracker.tasks import stop_task

THROUGHPUT = web.AppKey("console_throughput", SharedMinutes)
HERE = Path(__file__).resolve().parent
STATIC = {p.name: p for p in (HERE / "static").iterdir() if p.is_file()}  # the CSS and JS, by name
PAGE_SIZE = 50
REJECTED_SHOWN = 20
# the pages carry personal data: kept out of caches, frames and other sites' referrers; scripts, styles and
# form posts only from the service itself (a slip in escaping would still run nothing)
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
routes = web.RouteTableDef()
Page = Callable[[web.Request], Awaitable[web.StreamResponse]]


def setup(app: web.Application) -> None:
    """Mount the console on ``app``: its templates, routes, static files and the per-minute sampler."""
    env = aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                               undefined=jinja2.StrictUndefined)
    env.filters["when"] = story.when
    app.add_routes(routes)
    app.cleanup_ctx.append(_sampler_ctx)


async def _sampler_ctx(app: web.Application) -> AsyncIterator[None]:
    ring = app[THROUGHPUT] = SharedMinutes(app[EVENTLOG].redis, functools.partial(read_counters, app[METRICS]))
    task = asyncio.create_task(ring.run(), name="console-throughput")
    yield
    await stop_task(task)
    with contextlib.suppress(Exception):  # the last seconds' growth too (Redis closes after this)
        await ring.sample()


def console_page(handler: Page) -> Page:
    """Check the API key first; answer a domain error (bad input, unknown contact, no key) as an HTML page."""

    @functools.wraps(handler)
    async def page(request: web.Request) -> web.StreamResponse:
        response = await _answer(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    async def _answer(request: web.Request) -> web.StreamResponse:
        try:
            check_access(request)
            return await handler(request)
        except Exception as exc:
            status = error_status(request.app, exc)
            if status is None:
                raise  # the edge answers it (a store down is a 503, never a 500 page of ours)
            response = aiohttp_jinja2.render_template("error.html", request, {
                "status": status, "message": str(exc), "authorised": status != 401}, status=status)
            if status == 401:
                response.headers["WWW-Authenticate"] = 'Basic realm="stitcher"'
            return response

    return page


@routes.get("/console")
async def console_root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/console/")


@routes.get("/console/static/{name}")
@console_page
async def static_file(request: web.Request) -> web.StreamResponse:
    """The console's CSS and JS, behind the key as its pages are (a browser sends the key it was asked for)."""
    path = STATIC.get(request.match_info["name"])
    if path is None:
        raise NotFound("the console has no such file")
    return web.FileResponse(path)


@routes.get("/console/")
@console_page
async def home(request: web.Request) -> web.StreamResponse:
    return aiohttp_jinja2.render_template("search.html", request, _search_context())


def _search_context(text: str = "", kind: str = "any", **extra: Any) -> dict[str, Any]:
    return {"text": text, "kind": kind, "kinds": search.KINDS, "hits": None, "message": None, **extra}


@routes.post("/console/search")
@console_page
async def find(request: web.Request) -> web.StreamResponse:
    """One hit opens the contact (303, its id in the URL); several are listed; none says so."""
    try:
        form = await request.post()
    except (ValueError, LookupError):  # a body that is not UTF-8, or a charset Python does not know
        raise ValidationFailed([{"field": "query", "message": "the form is not readable text"}]) from None
    text, kind = str(form.get("q", "")).strip(), str(form.get("kind", "any"))
    problem = jsonbody.text_problem(text) or ("is too long" if len(text) > search.MAX_QUERY else None)
    if problem or not text:
        raise ValidationFailed([{"field": "query", "message": problem or "is empty"}])
    async with request.app[DB].reader() as s:
        hits = await search.find(s, text, kind, request.app[NORMALISER])
    if len(hits) == 1:
        raise web.HTTPSeeOther(f"/console/contact/{hits[0]['id']}")
    message = None if hits else f"Nobody found for this {search.KINDS[kind].lower()}."
    return aiohttp_jinja2.render_template("search.html", request,
                                          _search_context(text, kind, hits=hits, message=message))


@routes.get("/console/contact/{contact_id}")
@console_page
async def contact(request: web.Request) -> web.StreamResponse:
    """The contact, one page of its woven story (``?after=``: the previous page's ``next``), its chart and
    its identity log; a merged contact shows where it went and its own identity log."""
    contact_id = path_contact_id(request)
    after = keyset_after(request)
    async with request.app[DB].reader() as s:
        try:
            body = await views.get_contact(s, contact_id)
        except ContactNotFound as exc:
            if "mergedInto" not in exc.extra:
                raise
            log = await views.identity_log(s, contact_id)
            return aiohttp_jinja2.render_template("merged.html", request, {
                "contact_id": contact_id, "into": exc.extra["mergedInto"],
                "identity": [story.identity_row(e) for e in log["entries"]]})
        page = await views.timeline(s, contact_id, views.Page(limit=PAGE_SIZE, after=after))
        log = await views.identity_log(s, contact_id)
        first_links = await store.first_links(s, {e["visitorId"] for e in page["events"] if e["visitorId"]})
        per_day = await store.activity_per_day(s, contact_id)
    identity = [story.identity_row(e) for e in log["entries"]]
    events = [story.event_row(e, first_links) for e in page["events"]]
    until = events[-1].time if page["next"] and events else None
    return aiohttp_jinja2.render_template("contact.html", request, {
        "contact": body, "rows": story.weave(events, identity, after[0] if after else None, until),
        "total": page["total"], "next": page["next"], "paged": after is not None,
        "identity": identity, "chart": story.chart(per_day)})


@routes.get("/console/overview")
@console_page
async def overview(request: web.Request) -> web.StreamResponse:
    """Events per minute and in the last hour (every process's, from Redis), held events, the latest
    rejected beacon events and the running imports."""
    ring = request.app[THROUGHPUT]
    await ring.sample()
    hour = await ring.rows(last=ring.minutes)
    async with request.app[DB].reader() as s:
        held = await store.held_count(s)
        imports = await store.running_imports(s)
    rejected = await request.app[EVENTLOG].rejected(REJECTED_SHOWN)
    return aiohttp_jinja2.render_template("overview.html", request, {
        "minutes": hour[:15], "totals": {k: sum(n[k] for _, n in hour) for k in SERIES}, "held": held,
        "rejected": rejected, "imports": imports})
