"""API events' rows (``api_events``): the receipt (idempotency record) of each event sent with a key, and held
events — events posted for a person not yet known, waiting under an identity key.

Every writer that creates a contact or gives one a new identifier (add/update, PUT, subscribe, import,
orders) calls ``attach`` inside its transaction, after the identifiers are written and while it still holds
the identity keys it locked. The events API holds an event under a key only while holding that key's lock
(``stitcher.events``), so "event arrives" and "contact gets the identifier" serialise; and ``attach`` claims
each held row under a row lock (``FOR UPDATE``, re-checked), so two writers reaching one held event through
different keys (a mobile and a web push token) still put it on one timeline once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from stitcher.domain.identifiers import IdentifierKind, Identity, Normaliser
from stitcher.domain.rules import read_key_value
from stitcher.stitch import insert_timeline
from stitcher.store import identity_keys, pg_driver
from stitcher.store.db import Database
from stitcher.store.models import ApiEvent, Contact
from stitcher.store.repo import now_ms, resolve_merged
from stitcher.store.tables import one_of, pg_one_of

# the kinds of key an event can be held under; a web push token claims what a push token left (held as mobilepush)
HOLDABLE = ("ext:", "email:", "sms:", "mobilepush:")
_WEBPUSH = "webpush:"
_HELD_KINDS = {"email": IdentifierKind.EMAIL, "sms": IdentifierKind.SMS, "mobilepush": IdentifierKind.MOBILEPUSH,
               "webpush": IdentifierKind.MOBILEPUSH}
_PG_ANY_HELD = text("SELECT EXISTS (SELECT 1 FROM api_events WHERE held_key = ANY(CAST(:keys AS text[])))")


def timeline_row(contact_id: int, event: ApiEvent) -> dict[str, Any]:
    """The timeline row of an API event (``source: "api"``)."""
    return {"contact_id": contact_id, "event_id": event.event_id, "source": "api", "type": event.type,
            "occurred_at": event.occurred_at, "received_at": event.received_at, "visitor_id": None,
            "data": event.data}


async def receipt(session: AsyncSession, event_id: str) -> tuple[str | None, int | None] | None:
    """``(held_key, contact_id)`` of an event received before under this id, None if it is new."""
    row = (await session.execute(select(col(ApiEvent.held_key), col(ApiEvent.contact_id)).where(
        col(ApiEvent.event_id) == event_id))).one_or_none()
    return None if row is None else (row.held_key, row.contact_id)


async def record(session: AsyncSession, event: ApiEvent) -> None:
    """Insert an event's row (held, or the receipt of a stored one); a second row of one event id is an
    ``IntegrityError`` (two copies racing)."""
    await session.execute(insert(ApiEvent).values(**event.model_dump(exclude={"id"})))


async def lock_live_contact(session: AsyncSession, contact_id: int) -> int | None:
    """Share-lock a contact row an event goes to (step 2 of the lock order: a merge of it waits for the
    event, or finished first) and return the live contact it is — itself or the one it was merged into —
    or None if it was erased."""
    row = (await session.execute(select(col(Contact.id), col(Contact.merged_into_id)).where(
        col(Contact.id) == contact_id).with_for_update(read=True))).one_or_none()
    if row is None:
        return None
    if row.merged_into_id is None:
        return contact_id
    winner = await resolve_merged(session, contact_id)
    return winner.id if winner is not None else None


def held_keys(keys: Iterable[str]) -> list[str]:
    """The keys among these (``identity_keys`` spelling) that an event can be held under, as it is held."""
    out = []
    for key in keys:
        if key.startswith(_WEBPUSH):
            key = "mobilepush:" + key.removeprefix(_WEBPUSH)
        if key.startswith(HOLDABLE):
            out.append(key)
    return out


async def attach(db: Database, session: AsyncSession, keys_by_contact: Mapping[int, Iterable[str]]) -> int:
    """Move the events held under these identity keys onto each contact's timeline; returns how many.

    ``keys_by_contact`` maps a contact id to identity keys spelt as ``identity_keys`` spells them
    (``ext:<id>``, ``email:<v>``, ``sms:<v>``, ``mobilepush:<v>``, ``webpush:<v>``), which the caller has
    locked (``Database.lock_keys``). Other keys (``id:``, ``vid:``) are ignored. A key given for several
    contacts goes to the first.
    """
    contact_of: dict[str, int] = {}
    for contact_id, keys in keys_by_contact.items():
        for key in held_keys(keys):
            contact_of.setdefault(key, contact_id)
    if not contact_of:
        return 0
    # the keys are locked, so no event can be held under them meanwhile: most calls find none, and learn it
    # from one index probe (its plan kept on the connection) before any row is loaded and locked
    if (conn := await pg_driver.driver(session)) is not None and not await conn.fetchval(
            _PG_ANY_HELD, {"keys": list(contact_of)}):
        return 0
    # FOR UPDATE re-checks the condition after waiting: a row another writer attached meanwhile drops out
    # the keys bound as one array on PostgreSQL: a chunk of an import brings a thousand or more
    one = pg_one_of if db.dialect == "postgresql" else one_of
    held = list((await session.execute(
        select(ApiEvent).where(one(col(ApiEvent.held_key), "keys"))
        .order_by(col(ApiEvent.id)).with_for_update().execution_options(populate_existing=True),
        {"keys": list(contact_of)})).scalars())
    if not held:
        return 0
    rows = []
    for event in held:
        assert event.held_key is not None
        rows.append(timeline_row(contact_of[event.held_key], event))
    await insert_timeline(db, session, rows)
    by_contact: dict[int, list[int | None]] = {}
    for row, event in zip(rows, held, strict=True):
        by_contact.setdefault(row["contact_id"], []).append(event.id)
    for contact_id, ids in by_contact.items():
        await session.execute(update(ApiEvent).where(col(ApiEvent.id).in_(ids)).values(
            contact_id=contact_id, held_key=None, data=None))
    return len(held)


async def expire(db: Database, now: int | None = None) -> int:
    """Delete every record past its ``expires_at``: held events nobody claimed in time and the receipts of
    stored ones whose resend window ended. Returns how many went."""
    cutoff = now or now_ms()
    async with db.reader() as session:  # most sweeps find nothing: no write transaction (SQLite's one writer)
        due = (await session.execute(select(col(ApiEvent.id)).where(col(ApiEvent.expires_at) <= cutoff)
                                     .limit(1))).first()
    if due is None:
        return 0
    async with db.transaction() as session:
        result = await session.execute(delete(ApiEvent).where(col(ApiEvent.expires_at) <= cutoff))
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass(frozen=True)
class HeldPage:
    events: list[dict[str, Any]]
    next: int | None  # the ``after`` of the next page, None on the last


def held_key(identifier: str, normaliser: Normaliser, field: str = "identifier") -> str:
    """The key events for this identifier are held under, for an operator's search: a key as the held list
    shows it (``ext:C-1``, ``email:…``, ``sms:…``, ``mobilepush:…``; ``webpush:`` is read as ``mobilepush:``),
    else the identifier read by its shape like an event's ``keyValue`` (email, phone, else external ID).
    A malformed value raises ``ValidationFailed`` naming ``field``."""
    prefix, colon, value = identifier.partition(":")
    kind = _HELD_KINDS.get(prefix.strip().lower()) if colon else None
    if kind is None and not (colon and prefix.strip().lower() == "ext"):
        identity = read_key_value(identifier, normaliser, field)
    elif kind is None:
        identity = Identity(external_id=normaliser.external_id(value, field))
    else:
        identity = Identity(channels=((kind, normaliser.channel(kind, value, field)),))
    return identity_keys.of_request(identity, ())[0]


async def held(session: AsyncSession, *, limit: int, after: int = 0, key: str | None = None) -> HeldPage:
    """Held events, oldest first, keyset-paginated by row id (for operators); only those held under ``key``
    when it is given (``held_key``)."""
    query = select(ApiEvent).where(col(ApiEvent.held_key).is_not(None), col(ApiEvent.id) > after)
    if key is not None:
        query = query.where(col(ApiEvent.held_key) == key)
    rows = list((await session.execute(query.order_by(col(ApiEvent.id)).limit(limit + 1))).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    events = [{"id": r.event_id, "row": r.id, "eventTypeKey": r.type, "heldUnder": r.held_key,
               "occurredAt": r.occurred_at, "receivedAt": r.received_at, "expiresAt": r.expires_at,
               **(r.data or {})} for r in rows]
    return HeldPage(events, rows[-1].id if more and rows else None)
