"""The groups API: ``/api/v1/groups`` and ``/api/v1/group/{id}`` (+ ``/contacts``), thin over ``GroupService``."""

from __future__ import annotations

from aiohttp import web

from stitcher.groups.service import GroupService
from stitcher.http_input import DB, NORMALISER, offset_page, path_id, read_json
from tracker.http import json_response

routes = web.RouteTableDef()
MAX_BODY = 64 * 1024  # 50 conditions of 1 KiB values fit many times over


def _service(request: web.Request) -> GroupService:
    return GroupService(request.app[DB], request.app[NORMALISER])  # it holds no state: made per request


def _group_id(request: web.Request) -> int:
    return path_id(request, "group_id", "groupId")


@routes.post("/api/v1/groups")
async def create(request: web.Request) -> web.StreamResponse:
    return json_response({"id": await _service(request).create(await read_json(request, MAX_BODY))})


@routes.get("/api/v1/groups")
async def listing(request: web.Request) -> web.StreamResponse:
    """A page of the groups by id: ``startindex`` (1-based), ``maxrows`` (≤ 500), ``TotalCount``."""
    page, total = await _service(request).listing(*offset_page(request))
    return json_response(page, headers={"TotalCount": str(total)})


@routes.get("/api/v1/group/{group_id}")
async def get(request: web.Request) -> web.StreamResponse:
    return json_response(await _service(request).get(_group_id(request)))


@routes.delete("/api/v1/group/{group_id}")
async def delete(request: web.Request) -> web.StreamResponse:
    group_id = _group_id(request)
    await _service(request).delete(group_id)
    return json_response({"id": group_id, "status": "deleted"})


@routes.get("/api/v1/group/{group_id}/contacts")
async def contacts(request: web.Request) -> web.StreamResponse:
    """A page of the group's contacts by id: ``startindex`` (1-based), ``maxrows`` (≤ 500), ``TotalCount``."""
    page, total = await _service(request).contacts(_group_id(request), *offset_page(request))
    return json_response(page, headers={"TotalCount": str(total)})
