"""SQL of the orders: the buyers' candidates and the orders of a whole request in a few set-based statements."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Text, and_, bindparam, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from stitcher.domain.identifiers import IdentifierKind, Identity
from stitcher.domain.rules import Candidate, Lookup
from stitcher.store.contact_rows import candidate
from stitcher.store.db import Database
from stitcher.store.models import Contact, Identifier, Order, TimelineEvent


async def by_external_id(s: AsyncSession, external_order_ids: Iterable[str], *,
                         for_update: bool = False) -> dict[str, Order]:
    """The stored orders among these external order ids (row-locked by id with ``for_update``)."""
    ids = list(dict.fromkeys(external_order_ids))
    if not ids:
        return {}
    q = select(Order).where(col(Order.external_order_id).in_(ids)).order_by(col(Order.id))
    if for_update:
        q = q.with_for_update().execution_options(populate_existing=True)
    return {o.external_order_id: o for o in (await s.execute(q)).scalars()}


@dataclass
class Buyers:
    """Every contact the identities of a request point at, for ``rules.decide_order_owner``; contacts the
    request creates are added with ``add`` so that its later orders find them."""

    by_external_id: dict[str, Candidate] = field(default_factory=dict)
    by_channel: dict[tuple[IdentifierKind, str], list[Candidate]] = field(default_factory=dict)

    def lookup(self, identity: Identity) -> Lookup:
        ext = identity.external_id
        return Lookup(by_external_id=self.by_external_id.get(ext) if ext is not None else None,
                      by_channel={pair: tuple(self.by_channel.get(pair, ())) for pair in identity.channels})

    def add(self, contact: Candidate, identity: Identity) -> None:
        if contact.external_id is not None:
            self.by_external_id[contact.external_id] = contact
        for pair in identity.channels:
            self.by_channel.setdefault(pair, []).append(contact)

    def seen(self) -> dict[int, Candidate]:
        out = {c.id: c for c in self.by_external_id.values()}
        for group in self.by_channel.values():
            out.update((c.id, c) for c in group)
        return out


async def find_buyers(db: Database, s: AsyncSession, identities: Sequence[Identity]) -> Buyers:
    """Two queries for a whole request: the holders of its external IDs (live or deleted) and the live,
    unmerged contacts holding its emails and phones (as ``contact_rows.lookup`` reads them for one call)."""
    buyers = Buyers()
    exts = list({i.external_id for i in identities if i.external_id is not None})
    if exts:
        for contact in (await s.execute(select(Contact).where(
                col(Contact.external_customer_id).in_(exts)))).scalars():
            assert contact.external_customer_id is not None
            buyers.by_external_id[contact.external_customer_id] = candidate(contact)
    wanted = sorted({pair for i in identities for pair in i.channels})
    if wanted:
        q = select(col(Identifier.kind), col(Identifier.value), Contact)
        if db.dialect == "postgresql":
            # driven by the wanted (kind, value) pairs, one index probe each, whatever the table statistics
            # say (a freshly filled table looks empty to the planner, which then scans it per pair)
            pairs = func.unnest(bindparam("kinds", [k.value for k, _ in wanted], type_=ARRAY(Text)),
                                bindparam("values", [v for _, v in wanted], type_=ARRAY(Text))
                                ).table_valued("kind", "value").render_derived()
            q = q.select_from(pairs).join(Identifier, and_(col(Identifier.kind) == pairs.c.kind,
                                                           col(Identifier.value) == pairs.c.value))
        else:
            q = q.where(tuple_(col(Identifier.kind), col(Identifier.value)).in_(
                [(k.value, v) for k, v in wanted]))
        rows = await s.execute(q.join(Contact, col(Contact.id) == col(Identifier.contact_id)).where(
            col(Contact.deleted_at).is_(None), col(Contact.merged_into_id).is_(None)))
        for kind, value, contact in rows:
            buyers.by_channel.setdefault((IdentifierKind(kind), value), []).append(candidate(contact))
    return buyers


async def lock_contacts(s: AsyncSession, ids: Iterable[int]) -> dict[int, Contact]:
    """``SELECT … FOR UPDATE`` of these contacts in one statement ordered by id (step 2 of the lock order),
    re-read so that a change made before the lock is seen."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = await s.execute(select(Contact).where(col(Contact.id).in_(wanted)).order_by(col(Contact.id))
                           .with_for_update().execution_options(populate_existing=True))
    return {c.id: c for c in rows.scalars() if c.id is not None}


async def update_orders(s: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rewrite changed orders (``id``, ``status``, ``ordered_at``, ``data``, ``updated_at``), one executemany."""
    if rows:
        await s.execute(update(Order), list(rows))  # ORM bulk UPDATE by primary key


async def add_timeline(db: Database, s: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Timeline entries; one already there (same contact and event id) is kept as it is."""
    if rows:
        await s.execute(db.insert_ignore(TimelineEvent, ["contact_id", "event_id"]), list(rows))


async def page_of(s: AsyncSession, contact_id: int, limit: int,
                  before: tuple[int, int] | None) -> tuple[list[Order], int]:
    """A contact's orders newest first (by date, then id), keyset-paginated, and how many it has."""
    q = select(Order).where(col(Order.contact_id) == contact_id)
    if before is not None:
        t, row = before
        q = q.where((col(Order.ordered_at) < t) | ((col(Order.ordered_at) == t) & (col(Order.id) < row)))
    rows = list((await s.execute(q.order_by(col(Order.ordered_at).desc(), col(Order.id).desc())
                                 .limit(limit + 1))).scalars())
    total = len(rows) if before is None and len(rows) <= limit else await _count(s, contact_id)
    return rows, total


async def _count(s: AsyncSession, contact_id: int) -> int:
    return int((await s.execute(select(func.count()).select_from(Order).where(
        col(Order.contact_id) == contact_id))).scalar_one())
