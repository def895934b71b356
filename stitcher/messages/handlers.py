"""Messages API (SPEC §3): prepared messages, smartsend, one-off email and the outbox; thin handlers."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from stitcher.domain.errors import ValidationFailed
from stitcher.http_input import (
    DB,
    NORMALISER,
    int_param,
    keyset_after,
    keyset_page,
    path_contact_id,
    path_id,
    read_json,
)
from stitcher.messages import payload
from stitcher.messages.service import MessageService
from stitcher.store import messages as store
from stitcher.store.models import Message, OutboxEntry
from stitcher.views import live_contact
from tracker.http import json_response

MESSAGES = web.AppKey("messages", MessageService)
# 1000 recipients, each with a jsonParam of up to 64 KiB, would be 64 MiB: 8 MiB is plenty and bounded
MAX_SEND_BYTES = 8 * 1024 * 1024
MAX_IDEMPOTENCY_KEY = 256
routes = web.RouteTableDef()


def _message_id(request: web.Request) -> int:
    return path_id(request, "message_id", "messageId")


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise ValidationFailed([{"field": "Idempotency-Key",
                                 "message": f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters"}])
    return key


def _message_body(m: Message) -> dict[str, Any]:
    return {"id": m.id, "channel": m.channel, "name": m.name, "subject": m.subject, "from": m.sender,
            "body": m.body, "createdAt": m.created_at}


def _outbox_body(o: OutboxEntry) -> dict[str, Any]:
    return {"id": o.id, "messageId": o.message_id, "contactId": o.contact_id, "channel": o.channel,
            "address": o.address, "from": o.sender, "subject": o.subject, "body": o.body,
            "plainText": o.plain_text, "requestId": o.request_id, "state": o.state, "attempts": o.attempts,
            "error": o.error, "createdAt": o.created_at, "updatedAt": o.updated_at, "languageCode": o.language_code,
            "tags": o.tags or [], "externalRequestId": o.external_request_id}


@routes.post("/api/v1/messages")
async def create_message(request: web.Request) -> web.StreamResponse:
    """Create a prepared message; a template that does not parse is a 400 naming its field."""
    draft = payload.parse_message(await read_json(request), request.app[NORMALISER])
    return json_response({"id": await request.app[MESSAGES].create(draft)})


@routes.get("/api/v1/messages")
async def list_messages(request: web.Request) -> web.StreamResponse:
    """Prepared messages, newest first: ``?limit=`` (≤ 1000) and ``?after=`` the previous page's ``next``."""
    limit = int_param(request, "limit", 100, 1, 1000)
    before = keyset_after(request)
    async with request.app[DB].reader() as s:
        rows, total = await store.page_of_messages(s, limit, before)
    rows, cursor = keyset_page(rows, limit, lambda o: (o.created_at, o.id))
    return json_response({"total": total, "messages": [_message_body(m) for m in rows], "next": cursor})


@routes.get("/api/v1/message/{message_id}")
async def get_message(request: web.Request) -> web.StreamResponse:
    return json_response(_message_body(await request.app[MESSAGES].message(_message_id(request))))


@routes.post("/api/v1/message/{message_id}/smartsend")
async def smartsend(request: web.Request) -> web.StreamResponse:
    """Send a prepared message to 1 to 1000 recipients; each fails alone (``status: "ERROR"``)."""
    message_id = _message_id(request)
    key = _idempotency_key(request)
    body = await read_json(request, MAX_SEND_BYTES)
    recipients = payload.recipients(body, request.app[NORMALISER])
    options = payload.send_options(body)
    return json_response(await request.app[MESSAGES].smartsend(message_id, recipients, options, key))


@routes.post("/api/v1/message/email")
async def one_off_email(request: web.Request) -> web.StreamResponse:
    """Send one email, as given, to known contacts by address; each address fails alone."""
    key = _idempotency_key(request)
    email = payload.parse_email(await read_json(request, MAX_SEND_BYTES), request.app[NORMALISER])
    return json_response(await request.app[MESSAGES].email(email, key))


@routes.get("/api/v1/message/{message_id}/outbox")
async def message_outbox(request: web.Request) -> web.StreamResponse:
    """A message's sends, newest first, paginated as ``/messages``; ``?externalRequestId=`` those of a request."""
    message_id = _message_id(request)
    await request.app[MESSAGES].message(message_id)
    async with request.app[DB].reader() as s:
        return json_response({"messageId": message_id, **await _outbox_page(request, s, message_id=message_id)})


@routes.get("/api/v1/contact/{contact_id}/messages")
async def contact_messages(request: web.Request) -> web.StreamResponse:
    """A contact's sends, newest first, paginated as ``/messages``; ``?externalRequestId=`` as the outbox's."""
    contact_id = path_contact_id(request)
    async with request.app[DB].reader() as s:
        await live_contact(s, contact_id)
        return json_response({"contactId": contact_id, **await _outbox_page(request, s, contact_id=contact_id)})


async def _outbox_page(request: web.Request, s: AsyncSession, **owner: int) -> dict[str, Any]:
    limit = int_param(request, "limit", 100, 1, 1000)
    before = keyset_after(request)
    external = request.query.get("externalRequestId")
    if external is not None and not (0 < len(external) <= payload.MAX_EXTERNAL_REQUEST_ID and external.isprintable()):
        raise ValidationFailed([{"field": "externalRequestId", "message": "must be 1 to "
                                 f"{payload.MAX_EXTERNAL_REQUEST_ID} printable characters"}])
    rows, total = await store.page_of_outbox(s, limit, before, external_request_id=external, **owner)
    rows, cursor = keyset_page(rows, limit, lambda o: (o.created_at, o.id))
    return {"total": total, "outbox": [_outbox_body(o) for o in rows], "next": cursor}
