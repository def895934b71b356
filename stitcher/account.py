"""``GET /api/v1/account/info`` and ``GET /api/v1/version``: what the platform's plugins call to check a key.

Both sit behind the API's Basic auth (a wrong key is the 401 the plugin is looking for); the answers come
from configuration (``ORGANISATION_NAME``, ``USER_EMAIL``, ``ORG_ID``) and the installed package.
"""

from __future__ import annotations

from importlib.metadata import version

from aiohttp import web

from tracker.http import json_response
from tracker.routes import SETTINGS

# The platform's answer to GET /v1/version ("the version of the protocol") is two strings, a build number and
# the protocol's version; the clients that read it carry "1.0" in their fixtures (a PHP client's test of this
# call: {"version": "55810", "protocolVersion": "1.0"}). Stitcher speaks that v1 protocol, so it answers "1.0";
# its own package version goes in ``version``.
PROTOCOL_VERSION = "1.0"
routes = web.RouteTableDef()


@routes.get("/api/v1/account/info")
async def account_info(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    return json_response({"organisationName": settings.organisation_name, "userEmail": settings.user_email,
                          "orgId": settings.org_id})


@routes.get("/api/v1/version")
async def api_version(request: web.Request) -> web.StreamResponse:
    return json_response({"version": version("stitcher"), "protocolVersion": PROTOCOL_VERSION})
