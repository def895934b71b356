"""The events API's thin handlers: ``POST /api/v2/event`` (and ``/api/v1/event``, same body) and the
operators' list of held events."""

from __future__ import annotations

from aiohttp import web

from stitcher.events.payload import MAX_EVENT_BYTES, parse_event
from stitcher.events.service import EventService
from stitcher.http_input import DB, NORMALISER, int_param, query, read_json
from stitcher.store import held_events
from tracker.http import json_response

EVENTS = web.AppKey("events", EventService)
MAX_HELD_PAGE = 1000
routes = web.RouteTableDef()


@routes.post("/api/v2/event")
@routes.post("/api/v1/event")
async def post_event(request: web.Request) -> web.StreamResponse:
    """200 ``{id, status: stored|held, contactId, duplicate}``; 400 naming each bad field, 413 past 20 KiB."""
    body = await read_json(request, MAX_EVENT_BYTES)
    command = parse_event(body, request.app[NORMALISER], request.headers.get("Idempotency-Key"))
    outcome = await request.app[EVENTS].post(command)
    return json_response(outcome.body())


@routes.get("/api/v1/events/held")
async def list_held(request: web.Request) -> web.StreamResponse:
    """Held events, oldest first: ``?limit=`` (≤ 1000), ``?after=`` the previous page's ``next`` and
    ``?identifier=`` (an email, phone, external ID or a ``heldUnder`` key) for those of one person."""
    limit = int_param(request, "limit", 100, 1, MAX_HELD_PAGE)
    after = int_param(request, "after", 0, 0, 2**63 - 1)
    identifier = query(request).get("identifier")
    key = held_events.held_key(identifier, request.app[NORMALISER]) if identifier is not None else None
    async with request.app[DB].reader() as s:
        page = await held_events.held(s, limit=limit, after=after, key=key)
    return json_response({"events": page.events, "next": page.next})

