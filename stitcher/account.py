"""``GET /api/v1/account/info`` and ``GET /api/v1/version``: what the platform's plugins call to check a key.

Both sit behind the API's Basic auth (a wrong key is the 401 the plugin is looking for); the answers come
from configuration (``ORGANISATION_NAME``, ``USER_EMAIL``, ``ORG_ID``) and the installed package.
"""

from __future__ import annotations

from importlib.metadata import version

from aiohttp import web

from tracker.http import json_response
from tracker.routes import SETTINGS

PROTOCOL_VERSION = "1"  # the platform's API version whose paths and shapes this service follows (v1)
routes = web.RouteTableDef()


@routes.get("/api/v1/account/info")
async def account_info(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    return json_response({"organisationName": settings.organisation_name, "userEmail": settings.user_email,
                          "orgId": settings.org_id})


@routes.get("/api/v1/version")
async def api_version(request: web.Request) -> web.StreamResponse:
    return json_response({"version": version("stitcher"), "protocolVersion": PROTOCOL_VERSION})
