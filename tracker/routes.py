"""Tracking routes: the beacon (POST /t, GET /t.gif), the script, the demo, visitor history, operations."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from aiohttp import web

from tracker.answers import Tracking, error_reply, is_secure
from tracker.beacon import Limits
from tracker.clientip import peer_host
from tracker.errors import DomainError, NotFound, ValidationFailed
from tracker.eventlog import EventLog
from tracker.http import (
    METRICS,
    REQUEST_ID,
    json_response,
    read_body,
    self_accounted,
    to_response,
)
from tracker.identify import MAX_BODY_BYTES as IDENTIFY_MAX_BODY
from tracker.identify import Identify
from tracker.metrics import CONTENT_TYPE_LATEST
from tracker.ratelimit import TRACK, Limiter
from tracker.script import Script
from tracker.settings import Settings
from tracker.visitor import COOKIE, parse_visitor_id

SETTINGS = web.AppKey("settings", Settings)
EVENTLOG = web.AppKey("eventlog", EventLog)
SCRIPT = web.AppKey("script", Script)
LIMITS = web.AppKey("limits", Limits)
TRACKING = web.AppKey("tracking", Tracking)
IDENTIFY = web.AppKey("identify", Identify)
LIMITER = web.AppKey("limiter", Limiter)  # present when a rate limit is on
routes = web.RouteTableDef()


@routes.post("/t")
@self_accounted
async def beacon(request: web.Request) -> web.StreamResponse:
    """The beacon (``Tracking.beacon``): it answers its own errors as JSON the browser can read (CORS),
    counts and logs itself, so the edge middleware passes it through. The edge (``tracker.edge``) answers
    this route itself on the service's port; this is the application's own, for any other front."""
    started = time.perf_counter()
    tracking = request.app[TRACKING]
    headers = request.headers
    try:
        body = await read_body(request, tracking.limits.max_body_bytes)
    except DomainError as exc:
        return to_response(tracking.refused(headers, exc, started))
    return to_response(await tracking.beacon_reply(headers, body, is_secure(request.secure, headers), started,
                                                   *_client(request)))


@routes.post("/t/forget")
async def forget(request: web.Request) -> web.StreamResponse:
    """Consent withdrawn (``stitcher('consent', false)``): expire the HttpOnly visitor cookie, 204.

    The anonymous history is left to expire (``ANON_TTL_DAYS``): the cookie proves only that this browser
    carried the id, and a copied or guessed cookie must not let anyone erase another visitor's history.
    """
    response = web.Response(status=204)
    secure = is_secure(request.secure, request.headers)
    response.headers["Set-Cookie"] = (f"{COOKIE}=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; "
                                      f"HttpOnly; SameSite=Lax{'; Secure' if secure else ''}")
    response.headers["Cache-Control"] = "no-store"
    cors: list[tuple[str, str]] = []
    request.app[TRACKING].cors(request.headers, cors)
    response.headers.extend(cors)
    return response


@routes.post("/t/identify")
async def identify(request: web.Request) -> web.StreamResponse:
    """``stitcher('identify', {externalCustomerId, signature})``: link this visitor to a backend-signed ID
    (``tracker.identify``). Answered by aiohttp, not the edge: it is rare next to beacons. Its errors carry
    CORS headers too, so the page can read why it was refused."""
    request_id = request[REQUEST_ID]
    tracking = request.app[TRACKING]
    try:
        if tracking.limiter is not None:  # the beacon's bucket: a flood of guessed signatures is limited too
            await tracking.limiter.take(TRACK, tracking.client(*_client(request)))
        body = await read_body(request, IDENTIFY_MAX_BODY)
        reply = await request.app[IDENTIFY].identify(request.headers, body, is_secure(request.secure, request.headers),
                                                     request_id)
    except DomainError as exc:
        reply, _ = error_reply(exc, request_id)
    tracking.cors(request.headers, reply.headers)
    return to_response(reply)


@routes.options("/t/identify")
@routes.options("/t")
async def beacon_preflight(request: web.Request) -> web.StreamResponse:
    return to_response(request.app[TRACKING].preflight(request.headers))


@routes.get("/t.gif")
async def pixel(request: web.Request) -> web.StreamResponse:
    """Pixel fallback: the same body, base64url-encoded in ``d``; answers a 1x1 GIF."""
    tracking = request.app[TRACKING]
    return to_response(await tracking.pixel(request.headers, request.query.get("d"),
                                            is_secure(request.secure, request.headers), *_client(request)))


def _client(request: web.Request) -> tuple[str | None, str | None]:
    """The request's peer address (the proxy's, when one is in front) and its X-Forwarded-For, every such
    header joined in order (``tracker.clientip`` decides which to believe)."""
    peer = peer_host(request.transport.get_extra_info("peername") if request.transport is not None else None)
    forwarded = request.headers.getall("X-Forwarded-For", None)
    return peer, ", ".join(forwarded) if forwarded else None


@routes.get("/t.js")
async def script(request: web.Request) -> web.StreamResponse:
    return to_response(request.app[TRACKING].script_reply(request.headers))


@routes.get("/")
async def root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/demo/")


@routes.get("/demo/{tail:.*}")
async def demo(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(request.app[SETTINGS].static_dir / "demo.html")


@routes.get("/demo-consent/{tail:.*}")
async def demo_consent(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(request.app[SETTINGS].static_dir / "demo-consent.html")


@routes.get("/api/v1/visitor/{vid}/events")
async def visitor_events(request: web.Request) -> web.StreamResponse:
    """A visitor's recorded anonymous history and the contact it is linked to, if any (support tool)."""
    vid = parse_visitor_id(request.match_info["vid"])
    if vid is None:
        raise ValidationFailed([{"field": "vid", "message": "not a visitor id"}])
    contact, events = await request.app[EVENTLOG].history(vid)
    if not events and contact is None:
        raise NotFound(f"no recorded history for visitor {vid}", visitorId=vid)
    return json_response({"visitorId": vid, "linkedContactId": contact, "events": [
        _public_event(e) for e in events]})


def _public_event(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored event as the API shows it: ``rt``/``t`` spelled out as ``received_at``/``time``."""
    event = {k: v for k, v in stored.items() if k not in ("rt", "t")}
    event["received_at"] = stored["rt"]
    event["time"] = stored["t"]
    return event


@routes.get("/api/v1/tracker/rejected")
async def rejected_events(request: web.Request) -> web.StreamResponse:
    """The most recent rejected beacon events with their reasons, newest first (``?count=``, ≤ 1000)."""
    try:
        count = min(max(int(request.query.get("count", "100")), 1), 1000)
    except ValueError as exc:
        raise ValidationFailed([{"field": "count", "message": "must be an integer"}]) from exc
    return json_response({"rejected": await request.app[EVENTLOG].rejected(count)})


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.StreamResponse:
    """Alive; ``pid`` tells which process of ``serve --workers N`` answered."""
    return json_response({"status": "ok", "pid": os.getpid()})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready when Redis answers (the stitcher adds its SQL check through READY_CHECKS)."""
    checks = {"redis": await request.app[EVENTLOG].ping()}
    for name, check in request.app[READY_CHECKS].items():
        try:
            checks[name] = bool(await asyncio.wait_for(check(), 1.0))
        except Exception:
            checks[name] = False
    ok = all(checks.values())
    return json_response({"status": "ok" if ok else "unavailable", "checks": checks},
                         status=200 if ok else 503)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.StreamResponse:
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


READY_CHECKS = web.AppKey("ready_checks", dict)
