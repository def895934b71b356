"""The contacts API (SPEC §3): thin handlers over the contacts service and the read views."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from multidict import MultiMapping

from stitcher import jsonbody, views
from stitcher.contacts import ContactService
from stitcher.domain.identifiers import Normaliser
from stitcher.domain.rules import Mode
from stitcher.payload import parse_contact, parse_subscribe
from stitcher.store.db import Database
from tracker.errors import UnsupportedMediaType, ValidationFailed
from tracker.http import REQUEST_ID, json_response, read_body

DB = web.AppKey("db", Database)
CONTACTS = web.AppKey("contacts", ContactService)
NORMALISER = web.AppKey("normaliser", Normaliser)
MAX_JSON_BYTES = 1024 * 1024
routes = web.RouteTableDef()


async def read_json(request: web.Request, limit: int = MAX_JSON_BYTES, *, judged: bool = True) -> Any:
    """The JSON body: 415 for another media type, 413 past ``limit`` bytes (1 MiB), 400 naming the syntax
    error or each place ``jsonbody.loads`` refuses (duplicate keys, NUL, numbers past 64 bits, nesting past
    the limit). With ``judged=False`` the refused places are left for the caller (``jsonbody.problems``)."""
    if request.content_type not in ("application/json", "text/plain", "application/octet-stream"):
        raise UnsupportedMediaType(f"expected application/json, got {request.content_type}")
    raw = await read_body(request, limit)
    return jsonbody.loads(raw) if judged else jsonbody.decode(raw)


def _query(request: web.Request) -> MultiMapping[str]:
    """The query parameters, each refused with a 400 naming it if its text cannot reach SQL (a NUL)."""
    errors = [{"field": name, "message": why} for name, value in request.query.items()
              if (why := jsonbody.text_problem(name) or jsonbody.text_problem(value)) is not None]
    if errors:
        raise ValidationFailed(errors)
    return request.query


def _request_id(request: web.Request) -> str | None:
    """The id the edge middleware answers this request with (X-Request-Id), for the identity log."""
    return request.get(REQUEST_ID)


def _contact_id(request: web.Request) -> int:
    raw = request.match_info["contact_id"]
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1 or len(raw) > 18:
        raise ValidationFailed([{"field": "contactId", "message": "must be a positive integer"}])
    return int(raw)


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = _query(request).get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or not lo <= int(raw) <= hi:
        raise ValidationFailed([{"field": name, "message": f"must be an integer from {lo} to {hi}"}])
    return int(raw)


@routes.post("/api/v1/contact")
async def add_update(request: web.Request) -> web.StreamResponse:
    contact = parse_contact(await read_json(request), request.app[NORMALISER])
    outcome = await request.app[CONTACTS].upsert(Mode.ADD_UPDATE, contact, request_id=_request_id(request))
    return json_response({**outcome.body(), "ignored": list(contact.ignored)})


@routes.put("/api/v1/contact/{contact_id}")
async def update(request: web.Request) -> web.StreamResponse:
    contact_id = _contact_id(request)
    contact = parse_contact(await read_json(request), request.app[NORMALISER], contact_id=contact_id)
    outcome = await request.app[CONTACTS].upsert(Mode.UPDATE, contact, request_id=_request_id(request))
    return json_response({**outcome.body(), "ignored": list(contact.ignored)})


@routes.post("/api/v1/contact/subscribe")
async def subscribe(request: web.Request) -> web.StreamResponse:
    sub = parse_subscribe(await read_json(request), request.app[NORMALISER])
    outcome = await request.app[CONTACTS].upsert(Mode.SUBSCRIBE, sub.contact, groups=sub.groups,
                                                 form_type=sub.form_type, request_id=_request_id(request))
    groups = list(dict.fromkeys((*sub.contact.groups, *sub.groups)))
    return json_response({**outcome.body(), "groups": groups, "ignored": list(sub.contact.ignored)})


@routes.get("/api/v1/contact/{contact_id}")
async def get_contact(request: web.Request) -> web.StreamResponse:
    async with request.app[DB].reader() as s:
        return json_response(await views.get_contact(s, _contact_id(request)))


@routes.get("/api/v1/contact/{contact_id}/events")
async def contact_events(request: web.Request) -> web.StreamResponse:
    """The stitched timeline, oldest first: ``?limit=`` (≤ 1000) and ``?after=`` the previous ``next``."""
    after = None
    if cursor := _query(request).get("after"):
        t, _, row = cursor.partition(".")
        if not all(part.isascii() and part.isdigit() and len(part) <= 19 and int(part) < 2**63
                   for part in (t, row)):
            raise ValidationFailed([{"field": "after", "message": "must be the `next` of a previous page"}])
        after = (int(t), int(row))
    page = views.Page(limit=_int_param(request, "limit", 100, 1, 1000), after=after)
    async with request.app[DB].reader() as s:
        return json_response(await views.timeline(s, _contact_id(request), page))


@routes.get("/api/v1/contact/{contact_id}/identity-log")
async def identity_log(request: web.Request) -> web.StreamResponse:
    async with request.app[DB].reader() as s:
        return json_response(await views.identity_log(s, _contact_id(request)))


def _erase(request: web.Request) -> bool:
    value = _query(request).get("erase", "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise ValidationFailed([{"field": "erase", "message": "must be true or false"}])
    return value in ("true", "1")


@routes.delete("/api/v1/contact/{contact_id}")
async def delete_contact(request: web.Request) -> web.StreamResponse:
    contact_id = _contact_id(request)
    await request.app[CONTACTS].delete(contact_id, erase=_erase(request), request_id=_request_id(request))
    return json_response({"id": contact_id, "status": "erased" if _erase(request) else "deleted"})


@routes.delete("/api/v1/contact")
async def delete_by_external_id(request: web.Request) -> web.StreamResponse:
    raw = _query(request).get("externalCustomerId")
    if raw is None:
        raise ValidationFailed([{"field": "externalCustomerId", "message": "is required"}])
    external_id = request.app[NORMALISER].external_id(raw)
    service = request.app[CONTACTS]
    contact_id = await service.id_by_external_id(external_id)
    await service.delete(contact_id, erase=_erase(request), request_id=_request_id(request))
    return json_response({"id": contact_id, "status": "erased" if _erase(request) else "deleted"})


_SEARCH = {"email", "sms", "firstname", "lastname"}


@routes.get("/api/v1/contacts")
async def search(request: web.Request) -> web.StreamResponse:
    """Search live contacts; ``externalCustomerId`` searches by that alone (combined with others: 400)."""
    q = _query(request)
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
    criteria = views.Search(email=email, sms=sms, first_name=q.get("firstname"), last_name=q.get("lastname"),
                            external_id=external_id,
                            start=_int_param(request, "startindex", 1, 1, 10_000_000),
                            max_rows=_int_param(request, "maxrows", 500, 1, 500))
    async with request.app[DB].reader() as s:
        contacts, total = await views.search(s, criteria)
    return json_response(contacts, headers={"TotalCount": str(total)})
