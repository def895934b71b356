"""Tracking routes: the beacon (POST /t, GET /t.gif), the script, the demo, visitor history, operations."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from tracker.beacon import Batch, Limits, decode_pixel, parse_batch
from tracker.bots import is_bot
from tracker.errors import NotFound, Unavailable, ValidationFailed
from tracker.eventlog import EventLog
from tracker.http import (
    METRICS,
    account,
    error_answer,
    json_response,
    read_body,
    request_id_of,
    self_accounted,
)
from tracker.metrics import CONTENT_TYPE_LATEST
from tracker.script import Script
from tracker.settings import Settings
from tracker.visitor import COOKIE, COOKIE_MAX_AGE, choose_visitor_id, parse_visitor_id

SETTINGS = web.AppKey("settings", Settings)
EVENTLOG = web.AppKey("eventlog", EventLog)
SCRIPT = web.AppKey("script", Script)
LIMITS = web.AppKey("limits", Limits)
VISITOR_HEADER = "X-Stitcher-Visitor"
# 1x1 transparent GIF
PIXEL = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c000000000100010000020144003b")
routes = web.RouteTableDef()


def _cors(request: web.Request, response: web.StreamResponse) -> None:
    origin = request.headers.get("Origin")
    if not origin:
        return
    allowed = request.app[SETTINGS].allowed_origins
    if "*" in allowed or origin in allowed:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Access-Control-Expose-Headers"] = f"{VISITOR_HEADER}, Retry-After"
        response.headers["Vary"] = "Origin"


async def _ingest(request: web.Request, raw: bytes) -> str:
    """Validate, store and account for one beacon; returns the visitor id. Raises 400/413/503."""
    app = request.app
    metrics = app[METRICS]
    received_at = int(time.time() * 1000)
    try:
        batch: Batch = parse_batch(raw, app[LIMITS], received_at,
                                   bot=is_bot(request.headers.get("User-Agent", "")))
    except ValidationFailed:
        metrics.count_events("malformed_request", 1)
        raise
    vid, _ = choose_visitor_id(request.cookies.get(COOKIE), batch.vid, batch.reset)
    rejected = batch.rejected
    try:
        if batch.accepted:
            stored, duplicates, over_cap = await app[EVENTLOG].append(vid, batch.accepted)
            metrics.count_events("accepted", stored)
            metrics.count_events("duplicate", duplicates)
            if over_cap:
                rejected += [{"id": i, "reason": "visitor history is at its cap", "event": ""} for i in over_cap]
        if rejected:
            metrics.count_events("rejected", len(rejected))
            await app[EVENTLOG].record_rejected(vid, rejected)  # bounded by the client's socket timeout
    except (TimeoutError, OSError, RedisError) as exc:
        raise Unavailable("event storage is unavailable, retry shortly") from exc
    return vid


_COOKIE_ATTRS = f"; Max-Age={COOKIE_MAX_AGE}; Path=/; HttpOnly; SameSite=Lax"


def _set_visitor(request: web.Request, response: web.StreamResponse, vid: str) -> None:
    # written by hand: http.cookies' Morsel costs more than the rest of the response (vid is a plain UUID)
    secure = request.secure or request.headers.get("X-Forwarded-Proto") == "https"
    response.headers["Set-Cookie"] = f"{COOKIE}={vid}{_COOKIE_ATTRS}{'; Secure' if secure else ''}"
    response.headers[VISITOR_HEADER] = vid


@routes.post("/t")
@self_accounted
async def beacon(request: web.Request) -> web.StreamResponse:
    """The beacon: text/plain (sendBeacon, no preflight) or application/json body; 204 once stored.

    The hot path, so it does the edge middleware's work itself, without binding a log context: errors are
    answered here (as JSON the browser can read: CORS), then one metrics update and one request line.
    """
    started = time.perf_counter()
    request_id = request_id_of(request)
    error = None
    response: web.StreamResponse
    try:
        vid = await _ingest(request, await read_body(request, request.app[LIMITS].max_body_bytes))
        response = web.Response(status=204)
        _set_visitor(request, response, vid)
    except Exception as exc:  # answered here, not by the edge middleware, so that CORS lets the browser read it
        response, error = error_answer(request, exc, request_id)
    _cors(request, response)
    response.headers["X-Request-Id"] = request_id
    account(request, "/t", response.status, started, request_id, error)
    return response


@routes.post("/t/forget")
async def forget(request: web.Request) -> web.StreamResponse:
    """Consent withdrawn (``stitcher('consent', false)``): expire the HttpOnly visitor cookie, 204.

    The anonymous history is left to expire (``ANON_TTL_DAYS``): the cookie proves only that this browser
    carried the id, and a copied or guessed cookie must not let anyone erase another visitor's history.
    """
    response = web.Response(status=204)
    secure = request.secure or request.headers.get("X-Forwarded-Proto") == "https"
    response.headers["Set-Cookie"] = (f"{COOKIE}=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; "
                                      f"HttpOnly; SameSite=Lax{'; Secure' if secure else ''}")
    response.headers["Cache-Control"] = "no-store"
    _cors(request, response)
    return response


@routes.options("/t")
async def beacon_preflight(request: web.Request) -> web.StreamResponse:
    response = web.Response(status=204)
    _cors(request, response)
    response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
    response.headers["Access-Control-Allow-Headers"] = "Content-Type"
    response.headers["Access-Control-Max-Age"] = "86400"
    return response


@routes.get("/t.gif")
async def pixel(request: web.Request) -> web.StreamResponse:
    """Pixel fallback: the same body, base64url-encoded in ``d``; answers a 1x1 GIF."""
    vid = await _ingest(request, decode_pixel(request.query.get("d")))
    response = web.Response(body=PIXEL, content_type="image/gif",
                            headers={"Cache-Control": "no-store, max-age=0"})
    _set_visitor(request, response, vid)
    return response


@routes.get("/t.js")
async def script(request: web.Request) -> web.StreamResponse:
    s = request.app[SCRIPT]
    headers = {"ETag": s.etag, "Cache-Control": "public, max-age=3600", "Vary": "Accept-Encoding"}
    if_none_match = request.headers.get("If-None-Match", "")
    if s.etag in if_none_match or if_none_match.strip() == "*":
        return web.Response(status=304, headers=headers)
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=s.gzipped, headers=headers, content_type="application/javascript")
    return web.Response(body=s.minified, headers=headers, content_type="application/javascript")


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
    return json_response({"status": "ok"})


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
