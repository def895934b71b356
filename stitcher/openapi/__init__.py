"""``GET /api/openapi.json``: an OpenAPI 3.1 document of the whole HTTP API (``stitcher.openapi.document``).

The document is kept by hand beside the handlers, which read their bodies with hand-written parsers (no
schema library models them); its enums and limits are the handlers' own constants, and
``tests/unit/test_openapi.py`` checks it against the route table: every route documented (method and path),
nothing documented that is not routed.
"""

from __future__ import annotations

from functools import cache

import orjson
from aiohttp import web

from stitcher.openapi.document import document

routes = web.RouteTableDef()


@cache
def _body() -> bytes:
    return orjson.dumps(document())


@routes.get("/api/openapi.json")
async def openapi_json(request: web.Request) -> web.StreamResponse:
    return web.Response(body=_body(), content_type="application/json")
