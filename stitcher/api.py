"""The contacts API (SPEC §3): thin handlers over the contacts service and the read views."""

from __future__ import annotations

from aiohttp import web

from stitcher import group_refs, views
from stitcher.contacts import ContactService
from stitcher.domain.rules import Mode
from stitcher.http_input import (
    DB,
    NORMALISER,
    int_param,
    keyset_after,
    offset_page,
    path_contact_id,
    query,
    read_json,
    request_id,
)
from stitcher.payload import parse_contact, parse_subscribe
from tracker.errors import ValidationFailed
from tracker.http import json_response

CONTACTS = web.AppKey("contacts", ContactService)
routes = web.RouteTableDef()


@routes.post("/api/v1/contact")
async def add_update(request: web.Request) -> web.StreamResponse:
    contact = await group_refs.contact(request.app[DB], parse_contact(await read_json(request),
                                                                       request.app[NORMALISER]))
    outcome = await request.app[CONTACTS].upsert(Mode.ADD_UPDATE, contact, request_id=request_id(request))
    return json_response({**outcome.body(), "ignored": list(contact.ignored)})


@routes.put("/api/v1/contact/{contact_id}")
async def update(request: web.Request) -> web.StreamResponse:
    contact_id = path_contact_id(request)
    contact = await group_refs.contact(request.app[DB], parse_contact(await read_json(request),
                                                                       request.app[NORMALISER], contact_id=contact_id))
    outcome = await request.app[CONTACTS].upsert(Mode.UPDATE, contact, request_id=request_id(request))
    return json_response({**outcome.body(), "ignored": list(contact.ignored)})


@routes.post("/api/v1/contact/subscribe")
async def subscribe(request: web.Request) -> web.StreamResponse:
    sub = await group_refs.subscribe(request.app[DB], parse_subscribe(await read_json(request),
                                                                       request.app[NORMALISER]))
    outcome = await request.app[CONTACTS].upsert(Mode.SUBSCRIBE, sub.contact, groups=sub.groups,
                                                 group_ids=[g for g, _ in sub.group_ids], form_type=sub.form_type,
                                                 request_id=request_id(request))
    return json_response({**outcome.body(), "groups": group_refs.joined_names(sub.contact, sub),
                          "ignored": list(sub.contact.ignored)})


@routes.get("/api/v1/contact/{contact_id}")
async def get_contact(request: web.Request) -> web.StreamResponse:
    async with request.app[DB].reader() as s:
        return json_response(await views.get_contact(s, path_contact_id(request)))


@routes.get("/api/v1/contact/{contact_id}/events")
async def contact_events(request: web.Request) -> web.StreamResponse:
    """The stitched timeline, oldest first: ``?limit=`` (≤ 1000) and ``?after=`` the previous ``next``."""
    page = views.Page(limit=int_param(request, "limit", 100, 1, 1000), after=keyset_after(request))
    async with request.app[DB].reader() as s:
        return json_response(await views.timeline(s, path_contact_id(request), page))


@routes.get("/api/v1/contact/{contact_id}/identity-log")
async def identity_log(request: web.Request) -> web.StreamResponse:
    async with request.app[DB].reader() as s:
        return json_response(await views.identity_log(s, path_contact_id(request)))


def _erase(request: web.Request) -> bool:
    value = query(request).get("erase", "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise ValidationFailed([{"field": "erase", "message": "must be true or false"}])
    return value in ("true", "1")


@routes.delete("/api/v1/contact/{contact_id}")
async def delete_contact(request: web.Request) -> web.StreamResponse:
    contact_id = path_contact_id(request)
    await request.app[CONTACTS].delete(contact_id, erase=_erase(request), request_id=request_id(request))
    return json_response({"id": contact_id, "status": "erased" if _erase(request) else "deleted"})


@routes.delete("/api/v1/contact")
async def delete_by_external_id(request: web.Request) -> web.StreamResponse:
    raw = query(request).get("externalCustomerId")
    if raw is None:
        raise ValidationFailed([{"field": "externalCustomerId", "message": "is required"}])
    external_id = request.app[NORMALISER].external_id(raw)
    service = request.app[CONTACTS]
    contact_id = await service.id_by_external_id(external_id)
    await service.delete(contact_id, erase=_erase(request), request_id=request_id(request))
    return json_response({"id": contact_id, "status": "erased" if _erase(request) else "deleted"})


_SEARCH = {"email", "sms", "firstname", "lastname"}


@routes.get("/api/v1/contacts")
async def search(request: web.Request) -> web.StreamResponse:
    """Search live contacts; ``externalCustomerId`` searches by that alone (combined with others: 400)."""
    q = query(request)
    normaliser = request.app[NORMALISER]
    given = _SEARCH & set(q)
    external_id = None
    if "externalCustomerId" in q:
        if given:
            raise ValidationFailed([{"field": "externalCustomerId",
                                     "message": f"cannot be combined with {', '.join(sorted(given))}"}])
        external_id = normaliser.external_id(q["externalCustomerId"])
    email = normaliser.email(q["email"], "email") if "email" in q else None
    sms = normaliser.phone(q["sms"], "sms") if "sms" in q else None
    start, max_rows = offset_page(request)
    criteria = views.Search(email=email, sms=sms, first_name=q.get("firstname"), last_name=q.get("lastname"),
                            external_id=external_id, start=start, max_rows=max_rows)
    async with request.app[DB].reader() as s:
        contacts, total = await views.search(s, criteria)
    return json_response(contacts, headers={"TotalCount": str(total)})
