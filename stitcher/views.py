"""Read side of the contacts API: a contact, its timeline, its identity log, and search."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from stitcher.domain.errors import ContactNotFound
from stitcher.http_input import keyset_page
from stitcher.store import repo
from stitcher.store.models import Contact, Identifier, IdentityLog, TimelineEvent


def contact_body(contact: Contact, channels: list[Identifier], groups: list[Any],
                 visitors: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": contact.id,
        "externalCustomerId": contact.external_customer_id,
        "firstName": contact.first_name,
        "lastName": contact.last_name,
        "languageCode": contact.language_code,
        "address": contact.address,
        "fields": contact.custom_fields or [],
        "channels": [{"type": c.kind, "value": c.value, **({"device": _device(c.device)} if c.device else {})}
                     for c in channels],
        "groups": [{"id": g.id, "name": g.name} for g in groups],
        "visitorIds": visitors,
        "createdAt": contact.created_at,
        "updatedAt": contact.updated_at,
    }
    return body


def _device(stored: str) -> Any:
    """A channel's device as it was given: an object was stored as its JSON, a string as itself."""
    if stored.startswith("{"):
        try:
            return json.loads(stored)
        except ValueError:
            pass
    return stored


async def live_contact(s: AsyncSession, contact_id: int) -> Contact:
    """The contact if it exists, is not deleted and was not merged (else 404, naming the winner if merged)."""
    contact = await s.get(Contact, contact_id)
    if contact is None or contact.deleted_at is not None:
        raise ContactNotFound(contact_id)
    if contact.merged_into_id is not None:
        raise ContactNotFound(contact_id, mergedInto=contact.merged_into_id)
    return contact


async def get_contact(s: AsyncSession, contact_id: int) -> dict[str, Any]:
    contact = await live_contact(s, contact_id)
    return contact_body(contact, await repo.channels_of(s, contact_id), await repo.groups_of(s, contact_id),
                        await repo.visitors_of(s, contact_id))


@dataclass(frozen=True)
class Page:
    limit: int = 100
    after: tuple[int, int] | None = None  # (occurred_at, row id) of the last entry already seen


def _timeline_entry(e: TimelineEvent) -> dict[str, Any]:
    data = dict(e.data or {})
    return {"id": e.event_id, "type": e.type, "time": e.occurred_at, "receivedAt": e.received_at,
            "source": e.source, "visitorId": e.visitor_id, **data}


async def timeline(s: AsyncSession, contact_id: int, page: Page) -> dict[str, Any]:
    """The stitched timeline, oldest first, keyset-paginated by (time, row id) so pages never shift."""
    await live_contact(s, contact_id)
    q = select(TimelineEvent).where(col(TimelineEvent.contact_id) == contact_id)
    if page.after is not None:
        t, row = page.after
        q = q.where((col(TimelineEvent.occurred_at) > t) |
                    ((col(TimelineEvent.occurred_at) == t) & (col(TimelineEvent.id) > row)))
    rows = list((await s.execute(q.order_by(col(TimelineEvent.occurred_at), col(TimelineEvent.id))
                                 .limit(page.limit + 1))).scalars())
    rows, cursor = keyset_page(rows, page.limit, lambda e: (e.occurred_at, e.id))
    total = int((await s.execute(select(func.count()).where(
        col(TimelineEvent.contact_id) == contact_id))).scalar_one())
    return {"contactId": contact_id, "total": total, "events": [_timeline_entry(e) for e in rows],
            "next": cursor}


async def identity_log(s: AsyncSession, contact_id: int) -> dict[str, Any]:
    """Every identity change of a contact, oldest first; an erased contact still shows its erase record."""
    contact = await s.get(Contact, contact_id)
    rows = list((await s.execute(select(IdentityLog).where(col(IdentityLog.contact_id) == contact_id)
                                 .order_by(col(IdentityLog.id)))).scalars())
    if contact is None and not rows:
        raise ContactNotFound(contact_id)
    return {"contactId": contact_id, "erased": contact is None, "entries": [
        {"action": r.action, "at": r.at, "requestId": r.request_id, **(r.detail or {})} for r in rows]}


@dataclass(frozen=True)
class Search:
    email: str | None = None
    sms: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    external_id: str | None = None
    start: int = 1  # 1-based
    max_rows: int = 500


async def search(s: AsyncSession, q: Search) -> tuple[list[dict[str, Any]], int]:
    """Live contacts matching every given criterion, by id; returns one page and the total count."""
    query = select(Contact).where(col(Contact.deleted_at).is_(None), col(Contact.merged_into_id).is_(None))
    if q.external_id is not None:
        query = query.where(col(Contact.external_customer_id) == q.external_id)
    for kind, value in (("email", q.email), ("sms", q.sms)):
        if value is not None:
            query = query.where(col(Contact.id).in_(select(col(Identifier.contact_id)).where(
                col(Identifier.kind) == kind, col(Identifier.value) == value)))
    if q.first_name is not None:
        query = query.where(func.lower(col(Contact.first_name)) == q.first_name.lower())
    if q.last_name is not None:
        query = query.where(func.lower(col(Contact.last_name)) == q.last_name.lower())
    total = await repo.count(s, query)
    contacts = list((await s.execute(query.order_by(col(Contact.id)).offset(q.start - 1).limit(q.max_rows))).scalars())
    return await list_bodies(s, contacts), total


async def list_bodies(s: AsyncSession, contacts: list[Contact]) -> list[dict[str, Any]]:
    """Contacts as a list shows them (search, a group's members): with their channels, in one query."""
    channels = await repo.channels_of_many(s, [c.id for c in contacts if c.id is not None])
    return [contact_body(c, channels[c.id], [], []) for c in contacts if c.id is not None]
