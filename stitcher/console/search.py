"""The console's search: one text box, read as a visitor id, an external ID, an email or a phone number.

``kind`` says which; ``any`` reads it by its shape as an event's ``keyValue`` is read (``rules.read_key_value``:
an ``@`` is an email, a leading ``+`` or ``00`` a phone, anything else an external ID), and a visitor id's
shape (a UUID) also looks up the contact that visitor is linked to. The lookups are the API's own.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from stitcher import views
from stitcher.domain.identifiers import IdentifierKind, Identity, Normaliser
from stitcher.domain.rules import read_key_value
from stitcher.store import console
from tracker.errors import ValidationFailed
from tracker.visitor import parse_visitor_id

KINDS = {"any": "Any", "external": "External ID", "email": "Email", "phone": "Phone", "visitor": "Visitor id"}
MAX_QUERY = 1024
MAX_HITS = 50


def identity_of(text: str, kind: str, normaliser: Normaliser) -> Identity | None:
    """What the query names as an identifier (None for a visitor search); raises ValidationFailed if the
    text is no such identifier."""
    if kind == "visitor":
        return None
    if kind == "external":
        return Identity(external_id=normaliser.external_id(text, "query"))
    if kind == "email":
        return Identity(channels=((IdentifierKind.EMAIL, normaliser.email(text, "query")),))
    if kind == "phone":
        return Identity(channels=((IdentifierKind.SMS, normaliser.phone(text, "query")),))
    return read_key_value(text, normaliser, "query")


async def find(s: AsyncSession, text: str, kind: str, normaliser: Normaliser) -> list[dict[str, Any]]:
    """Live contacts the query names, by id (the API's contact bodies, without groups and visitors)."""
    if kind not in KINDS:
        raise ValidationFailed([{"field": "kind", "message": f"must be one of {', '.join(KINDS)}"}])
    vid = parse_visitor_id(text.strip())
    hits: dict[int, dict[str, Any]] = {}
    if kind in ("any", "visitor"):
        if vid is None and kind == "visitor":
            raise ValidationFailed([{"field": "query", "message": "is not a visitor id (a UUID)"}])
        contact_id = await console.contact_of_visitor(s, vid) if vid is not None else None
        if contact_id is not None:
            hits[contact_id] = await views.get_contact(s, contact_id)
    identity = identity_of(text, kind, normaliser)  # "any": a UUID may be an external ID as well
    if identity is not None:
        channel = dict(identity.channels)
        found, _ = await views.search(s, views.Search(
            external_id=identity.external_id, email=channel.get(IdentifierKind.EMAIL),
            sms=channel.get(IdentifierKind.SMS), max_rows=MAX_HITS))
        hits.update({c["id"]: c for c in found if c["id"] not in hits})
    return list(hits.values())
