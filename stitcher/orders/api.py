"""Orders API (SPEC §3): ``POST /api/v1/orders`` and ``GET /api/v1/contact/{id}/orders``; thin handlers."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from stitcher.http_input import (
    DB,
    NORMALISER,
    int_param,
    keyset_after,
    keyset_page,
    path_contact_id,
    read_json,
    request_id,
)
from stitcher.orders.payload import OrdersRejected, parse_orders
from stitcher.orders.service import OrderService
from stitcher.store import orders as store
from stitcher.views import live_contact
from tracker.http import json_response

ORDERS = web.AppKey("orders", OrderService)
# 1000 orders with their items: larger than the contact API's 1 MiB, still bounded
MAX_ORDERS_BYTES = 8 * 1024 * 1024
routes = web.RouteTableDef()


@routes.post("/api/v1/orders")
async def post_orders(request: web.Request) -> web.StreamResponse:
    """Upsert 1 to 1000 orders; each bad order fails alone (``failed``), the rest land (``orders``)."""
    parsed = parse_orders(await read_json(request, MAX_ORDERS_BYTES, judged=False), request.app[NORMALISER])
    if not parsed.orders:
        raise OrdersRejected(parsed.rejected)
    landed = await request.app[ORDERS].post(parsed.orders, request_id(request))
    bodies = []
    for result in landed:
        body = result.body()
        if ignored := parsed.ignored.get(result.index):
            body["ignored"] = ignored
        bodies.append(body)
    counts = {outcome: sum(1 for r in landed if r.outcome.value == outcome)
              for outcome in ("created", "updated", "unchanged")}
    return json_response({"total": len(landed) + len(parsed.rejected), **counts,
                          "failed": [r.body() for r in parsed.rejected], "orders": bodies})


@routes.get("/api/v1/contact/{contact_id}/orders")
async def contact_orders(request: web.Request) -> web.StreamResponse:
    """A contact's orders, newest first: ``?limit=`` (≤ 1000) and ``?after=`` the previous page's ``next``."""
    contact_id = path_contact_id(request)
    limit = int_param(request, "limit", 100, 1, 1000)
    before = keyset_after(request)
    async with request.app[DB].reader() as s:
        await live_contact(s, contact_id)
        rows, total = await store.page_of(s, contact_id, limit, before)
    rows, cursor = keyset_page(rows, limit, lambda o: (o.ordered_at, o.id))
    orders: list[dict[str, Any]] = [{"id": o.id, "contactId": o.contact_id, **o.data, "createdAt": o.created_at,
                                     "updatedAt": o.updated_at} for o in rows]
    return json_response({"contactId": contact_id, "total": total, "orders": orders, "next": cursor})
