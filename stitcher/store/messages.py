"""SQL of the messages: prepared messages, the recipients of a send (set-based), the outbox and its receipts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from stitcher.domain.identifiers import IdentifierKind, Identity
from stitcher.domain.rules import Candidate, Lookup
from stitcher.store import bulk, repo
from stitcher.store.contact_rows import candidate
from stitcher.store.db import Database
from stitcher.store.models import Contact, Identifier, Message, OutboxEntry, SendReceipt
from stitcher.store.multirow import insert_returning_ids

OUTBOX: Table = OutboxEntry.__table__  # type: ignore[attr-defined]
QUEUED, SENT, FAILED = "queued", "sent", "failed"


async def add_message(s: AsyncSession, values: Mapping[str, Any]) -> int:
    message = Message(**values, created_at=repo.now_ms())
    s.add(message)
    await s.flush()
    assert message.id is not None
    return message.id


async def get_message(s: AsyncSession, message_id: int) -> Message | None:
    return await s.get(Message, message_id)


def _before(q: Any, table: Any, before: tuple[int, int] | None) -> Any:
    """Rows older than the keyset cursor ``(created_at, id)``, newest first."""
    if before is not None:
        t, row = before
        q = q.where(or_(table.created_at < t, and_(table.created_at == t, table.id < row)))
    return q.order_by(table.created_at.desc(), table.id.desc())


async def page_of_messages(s: AsyncSession, limit: int, before: tuple[int, int] | None) -> tuple[list[Message], int]:
    rows = list((await s.execute(_before(select(Message), Message, before).limit(limit + 1))).scalars())
    return rows, int((await s.execute(select(func.count()).select_from(Message))).scalar_one())


async def page_of_outbox(s: AsyncSession, limit: int, before: tuple[int, int] | None, *,
                         message_id: int | None = None, contact_id: int | None = None,
                         external_request_id: str | None = None) -> tuple[list[OutboxEntry], int]:
    """Outbox rows of a message or of a contact (of one ``externalRequestId`` if given), newest first,
    keyset-paginated, and how many there are."""
    where = [col(OutboxEntry.message_id) == message_id if message_id is not None
             else col(OutboxEntry.contact_id) == contact_id]
    if external_request_id is not None:
        where.append(col(OutboxEntry.external_request_id) == external_request_id)
    rows = list((await s.execute(_before(select(OutboxEntry).where(*where), OutboxEntry, before)
                                 .limit(limit + 1))).scalars())
    total = int((await s.execute(select(func.count()).select_from(OutboxEntry).where(*where))).scalar_one())
    return rows, total


@dataclass(frozen=True)
class Person:
    """What a send needs of a contact: its row (names, fields) and its channels."""

    contact: Contact
    channels: Sequence[Identifier]

    def addresses(self, kind: IdentifierKind) -> list[str]:
        return [c.value for c in self.channels if c.kind == kind.value]


@dataclass(frozen=True)
class Recipients:
    """Every contact a send's recipients point at, read in a few queries for the whole request."""

    found: bulk.Found
    people: Mapping[int, Person]
    merged: Mapping[int, int] = field(default_factory=dict)  # a named contactId merged away -> its winner

    def lookup(self, identity: Identity) -> Lookup:
        """The recipient's candidates as ``rules.resolve_recipient`` reads them; a contactId merged into
        another names the winner (as an event's does)."""
        def cand(cid: int | None) -> Candidate | None:
            return candidate(self.people[cid].contact) if cid is not None and cid in self.people else None

        named = identity.contact_id
        by_id = cand(named if self.found.by_key.get(f"id:{named}") else self.merged.get(named or 0))
        by_ext = cand(self.found.by_external_id.get(identity.external_id)) if identity.external_id else None
        by_channel = {pair: tuple(c for cid in self.found.by_key.get(f"{pair[0].value}:{pair[1]}", [])
                                  if (c := cand(cid)) is not None and not c.deleted)
                      for pair in identity.channels}
        return Lookup(by_contact_id=by_id, by_external_id=by_ext, by_channel=by_channel)


async def find_recipients(s: AsyncSession, identities: Sequence[Identity]) -> Recipients:
    """The contacts behind these identities (``bulk.find``), with their rows and channels: four to six queries
    however many recipients."""
    keys = {f"id:{i.contact_id}" for i in identities if i.contact_id is not None}
    keys |= {f"{k.value}:{v}" for i in identities for k, v in i.channels}
    found = await bulk.find(s, (i.external_id for i in identities if i.external_id is not None), keys)
    gone = {i.contact_id for i in identities if i.contact_id is not None and not found.by_key.get(f"id:{i.contact_id}")}
    merged = {cid: winner for cid, winner in (await repo.merge_winners(s, gone)).items() if winner != cid}
    ids = sorted({*found.ids(), *merged.values()})
    if not ids:
        return Recipients(found, {})
    contacts = {c.id: c for c in (await s.execute(select(Contact).where(col(Contact.id).in_(ids)))).scalars()
                if c.id is not None}
    channels = await repo.channels_of_many(s, list(contacts))
    return Recipients(found, {cid: Person(c, channels[cid]) for cid, c in contacts.items()}, merged)


async def moved_recipients(db: Database, s: AsyncSession, contact_ids: Iterable[int]) -> set[int]:
    """Share-lock the contacts a send is about to write rows for (one statement ordered by id: step 2 of THE
    LOCK ORDER, so a merge or erase of one of them waits for the send, or committed before the lock) and
    return those that are no longer live: merged away, deleted or erased since they were read."""
    ids = sorted(set(contact_ids))
    if not ids:
        return set()
    q = (select(col(Contact.id)).where(col(Contact.id).in_(ids), col(Contact.merged_into_id).is_(None),
                                       col(Contact.deleted_at).is_(None)).order_by(col(Contact.id)))
    if db.dialect == "postgresql":
        q = q.with_for_update(read=True)
    return set(ids) - set((await s.execute(q)).scalars())


async def add_outbox(db: Database, s: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Outbox rows in one or two statements; their ids in the given order."""
    return await insert_returning_ids(db, s, OUTBOX, rows)


async def receipt(s: AsyncSession, key: str) -> dict[str, Any] | None:
    row = await s.get(SendReceipt, key)
    return dict(row.answer) if row is not None else None


PRUNE_BATCH = 5000


async def prune_receipts(db: Database, before: int) -> int:
    """Delete the send receipts written before ``before`` (epoch ms), in batches of ``PRUNE_BATCH`` (short
    transactions: SQLite's one writer is not held for long); how many went. Most sweeps find nothing, and
    find it without a write transaction."""
    old = col(SendReceipt.created_at) < before
    async with db.reader() as s:
        if (await s.execute(select(col(SendReceipt.key)).where(old).limit(1))).first() is None:
            return 0
    pruned = 0
    while True:
        async with db.transaction() as s:
            batch = select(col(SendReceipt.key)).where(old).order_by(col(SendReceipt.created_at)).limit(PRUNE_BATCH)
            result = await s.execute(delete(SendReceipt).where(col(SendReceipt.key).in_(batch.scalar_subquery())))
        count = int(getattr(result, "rowcount", 0) or 0)
        pruned += count
        if count < PRUNE_BATCH:
            return pruned


def add_receipt(s: AsyncSession, key: str, answer: Mapping[str, Any]) -> None:
    s.add(SendReceipt(key=key, answer=dict(answer), created_at=repo.now_ms()))


async def claim_due(db: Database, s: AsyncSession, channel: str, now: int, limit: int,
                    lease_until: int) -> list[OutboxEntry]:
    """Lease the queued rows of a channel that are due to this worker until ``lease_until``.

    The rows are picked with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (another process's worker takes other
    rows), and the lease is a conditional UPDATE: a row another worker leased meanwhile (on SQLite, whose
    driver reads outside the write transaction) no longer matches and is left to it.
    """
    due = (col(OutboxEntry.state) == QUEUED, col(OutboxEntry.channel) == channel,
           col(OutboxEntry.next_attempt_at) <= now)
    q = (select(col(OutboxEntry.id)).where(*due)
         .order_by(col(OutboxEntry.next_attempt_at), col(OutboxEntry.id)).limit(limit))
    if db.dialect == "postgresql":
        q = q.with_for_update(skip_locked=True)
    ids = list((await s.execute(q)).scalars())
    if not ids:
        return []
    leased = list((await s.execute(update(OutboxEntry).where(col(OutboxEntry.id).in_(ids), *due)
                                   .values(next_attempt_at=lease_until).returning(col(OutboxEntry.id)))).scalars())
    if not leased:
        return []
    return list((await s.execute(select(OutboxEntry).where(col(OutboxEntry.id).in_(leased))
                                 .order_by(col(OutboxEntry.id)))).scalars())


async def set_outcome(s: AsyncSession, row_id: int, values: Mapping[str, Any]) -> None:
    await s.execute(update(OutboxEntry).where(col(OutboxEntry.id) == row_id).values(**values))
