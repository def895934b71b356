"""Lean Core statements for writing one contact (add/update, PUT, subscribe): the hot path's SQL.

Every statement is built once, at import, with bind parameters (expanding ones for lists), so a call only
binds values and SQLAlchemy finds the compiled form in its cache: no ORM identity map, no flush, no refresh.
A call costs one lookup (contact id, external ID and every channel in one UNION ALL), one ``FOR UPDATE``
of the rows it changes, one insert or update of the contact (``RETURNING`` its id), one insert of its
identifiers; the audit rows go in one insert at commit (``repo.audit``). Table and column names follow
``stitcher/store/bulk.py`` (the import's set-based statements) so both can share them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, String, Table, bindparam, insert, literal_column, null, select, union_all, update
from sqlalchemy.ext.asyncio import AsyncSession

from stitcher.domain.identifiers import IdentifierKind, Identity
from stitcher.domain.rules import Candidate, Lookup
from stitcher.store.models import Contact, Identifier, VisitorLink

CONTACTS: Table = Contact.__table__  # type: ignore[attr-defined]
IDENTIFIERS: Table = Identifier.__table__  # type: ignore[attr-defined]
LINKS: Table = VisitorLink.__table__  # type: ignore[attr-defined]
# profile attributes (``ContactCommand.profile``) whose column is named otherwise
_COLUMN = {"custom_fields": "fields"}

_C, _I, _L = CONTACTS.c, IDENTIFIERS.c, LINKS.c
_ROW = (_C.id, _C.external_customer_id, _C.deleted_at, _C.updated_at, _C.merged_into_id)
# how a lookup row was found: 0 by contact id, 1 by external ID, 2 by a channel (kind, value)
_BY_ID, _BY_EXT, _BY_CHANNEL = 0, 1, 2
_LOOKUP = union_all(
    select(literal_column(str(_BY_ID)).label("via"), null().cast(String).label("kind"),
           null().cast(String).label("value"), *_ROW)
    .where(_C.id == bindparam("cid", type_=BigInteger)),
    select(literal_column(str(_BY_EXT)), null().cast(String), null().cast(String), *_ROW)
    .where(_C.external_customer_id == bindparam("ext", type_=String)),
    # both halves of the (kind, value) index; pairs of another kind's value are dropped when read
    select(literal_column(str(_BY_CHANNEL)), _I.kind, _I.value, *_ROW)
    .join_from(IDENTIFIERS, CONTACTS, _C.id == _I.contact_id)
    .where(_I.kind.in_(bindparam("kinds", expanding=True)), _I.value.in_(bindparam("values", expanding=True)),
           _C.deleted_at.is_(None), _C.merged_into_id.is_(None)),
)
_LOCK = (select(_C.id, _C.external_customer_id, _C.deleted_at, _C.merged_into_id)
         .where(_C.id.in_(bindparam("ids", expanding=True))).order_by(_C.id).with_for_update())
_INSERT_CONTACT = insert(CONTACTS).returning(_C.id)
_UPDATE_CONTACT = update(CONTACTS).where(_C.id == bindparam("target_id"))
_OPEN_LINKS = (select(_L.id, _L.visitor_id, _L.contact_id, _L.stitched_at)
               .where(_L.visitor_id.in_(bindparam("vids", expanding=True)), _L.unlinked_at.is_(None)))
_UNLINK = update(LINKS).where(_L.id == bindparam("link_id")).values(unlinked_at=bindparam("at"))
_LINK = insert(LINKS)


@dataclass(frozen=True)
class Locked:
    """A contact row as it is under its ``FOR UPDATE`` lock."""

    id: int
    external_id: str | None
    deleted: bool
    merged: bool


@dataclass(frozen=True)
class OpenLink:
    """A visitor's open link to a contact; ``stitched`` once its anonymous history is on the timeline."""

    id: int
    visitor_id: str
    contact_id: int
    stitched: bool


def _candidate(row: Any) -> Candidate:
    return Candidate(row.id, row.external_customer_id, row.deleted_at is not None, row.updated_at / 1000)


async def lookup(session: AsyncSession, identity: Identity, kinds: Sequence[IdentifierKind]) -> Lookup:
    """Every contact the request's identifiers point at, in one query (merged contacts never, deleted ones
    only by contact id or external ID)."""
    wanted = [(k, v) for k, v in identity.channels if k in kinds]
    rows = await session.execute(_LOOKUP, {
        "cid": identity.contact_id, "ext": identity.external_id,
        "kinds": sorted({k.value for k, _ in wanted}), "values": sorted({v for _, v in wanted})})
    by_contact_id = by_external_id = None
    by_channel: dict[tuple[IdentifierKind, str], list[Candidate]] = {pair: [] for pair in wanted}
    for row in rows:
        if row.via == _BY_ID:
            if row.merged_into_id is None:
                by_contact_id = _candidate(row)
        elif row.via == _BY_EXT:
            by_external_id = _candidate(row)
        elif (found := by_channel.get((IdentifierKind(row.kind), row.value))) is not None:
            found.append(_candidate(row))
    return Lookup(by_contact_id, by_external_id, {k: tuple(v) for k, v in by_channel.items()})


async def lock(session: AsyncSession, ids: Sequence[int]) -> dict[int, Locked]:
    """``SELECT … FOR UPDATE`` of these contacts, in one statement ordered by id (the lock order's step 2);
    erased ones are missing from the answer."""
    rows = await session.execute(_LOCK, {"ids": list(ids)})
    return {r.id: Locked(r.id, r.external_customer_id, r.deleted_at is not None, r.merged_into_id is not None)
            for r in rows}


def _columns(profile: Mapping[str, Any]) -> dict[str, Any]:
    return {_COLUMN.get(attr, attr): value for attr, value in profile.items()}


async def insert_contact(session: AsyncSession, external_id: str | None, profile: Mapping[str, Any],
                         now: int) -> int:
    """A new contact; returns its id."""
    values = {**_columns(profile), "external_customer_id": external_id, "created_at": now, "updated_at": now}
    return int((await session.execute(_INSERT_CONTACT, values)).scalar_one())


async def update_contact(session: AsyncSession, contact_id: int, changes: Mapping[str, Any], now: int) -> None:
    """Set profile attributes (and ``external_customer_id``, ``deleted_at`` when given) and ``updated_at``."""
    await session.execute(_UPDATE_CONTACT, {**_columns(changes), "updated_at": now, "target_id": contact_id})


async def open_links(session: AsyncSession, visitor_ids: Sequence[str]) -> dict[str, OpenLink]:
    """The open link of each of these visitors that has one."""
    if not visitor_ids:
        return {}
    rows = await session.execute(_OPEN_LINKS, {"vids": list(visitor_ids)})
    return {r.visitor_id: OpenLink(r.id, r.visitor_id, r.contact_id, r.stitched_at is not None) for r in rows}


async def unlink(session: AsyncSession, link_id: int, now: int) -> None:
    await session.execute(_UNLINK, {"link_id": link_id, "at": now})


async def link(session: AsyncSession, contact_id: int, visitor_ids: Sequence[str], now: int) -> None:
    """Open links from these visitors to the contact (their earlier open links closed before)."""
    if visitor_ids:
        await session.execute(_LINK, [{"visitor_id": v, "contact_id": contact_id, "linked_at": now}
                                              for v in visitor_ids])
