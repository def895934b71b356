"""``POST /api/v1/contacts`` (bulk import, answered at once) and ``GET /api/v1/importstatus/{asyncSessionId}``."""

from __future__ import annotations

import uuid

from aiohttp import web

from stitcher import group_refs, jsonbody
from stitcher.domain.errors import ImportNotFound
from stitcher.imports.request import parse_import
from stitcher.imports.runner import ImportRunner
from tracker.errors import UnsupportedMediaType
from tracker.http import REQUEST_ID, json_response, read_body

IMPORTS = web.AppKey("imports", ImportRunner)
MAX_IMPORT_BYTES = 16 * 1024 * 1024  # 3000 contacts of up to ~5 KiB each
routes = web.RouteTableDef()


@routes.post("/api/v1/contacts")
async def start_import(request: web.Request) -> web.StreamResponse:
    """Store the import and answer ``{"id": 0, "asyncSessionId"}`` at once (with ``ignored``: the dynamic
    groups ``groupNames`` names, which the rows will not join); the rows land in the background."""
    if request.content_type not in ("application/json", "text/plain", "application/octet-stream"):
        raise UnsupportedMediaType(f"expected application/json, got {request.content_type}")
    runner = request.app[IMPORTS]
    with runner.receiving():
        body = parse_import(jsonbody.loads(await read_body(request, MAX_IMPORT_BYTES)))
        ignored = await group_refs.named(runner.db, body.group_names, "groupNames")
        session_id = await runner.submit(body, request.get(REQUEST_ID))
    return json_response({"id": 0, "asyncSessionId": session_id, **({"ignored": ignored} if ignored else {})})


@routes.get("/api/v1/importstatus/{session_id}")
async def import_status(request: web.Request) -> web.StreamResponse:
    raw = request.match_info["session_id"]
    try:
        session_id = str(uuid.UUID(raw)) if len(raw) <= 64 else None
    except ValueError:
        session_id = None
    if session_id is None:
        raise ImportNotFound("")  # not echoed: it is no id at all
    return json_response(await request.app[IMPORTS].status(session_id))
