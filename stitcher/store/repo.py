"""Queries the services need: candidate lookups, identifiers, links, timeline rows, groups, audit."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from stitcher.domain.identifiers import IdentifierKind
from stitcher.store import audit as audit_log
from stitcher.store import groups, pg_driver
from stitcher.store.db import Database
from stitcher.store.models import (
    Contact,
    Group,
    GroupMember,
    Identifier,
    Order,
    OutboxEntry,
    TimelineEvent,
    VisitorLink,
)


def now_ms() -> int:
    return int(time.time() * 1000)


audit = audit_log.record  # an identity-log row, written with the transaction
_PG_ADD_IDENTIFIERS = text("""
    INSERT INTO identifiers (contact_id, kind, value, device, created_at)
    SELECT :cid, u.k, u.v, u.d, :now
    FROM unnest(CAST(:kinds AS text[]), CAST(:values AS text[]), CAST(:devices AS text[])) AS u(k, v, d)
    ON CONFLICT (contact_id, kind, value) DO NOTHING
""")


async def add_identifiers(db: Database, session: AsyncSession, contact_id: int,
                          channels: Iterable[tuple[IdentifierKind, str, str | None]]) -> None:
    channels = list(channels)
    if not channels:
        return
    now = now_ms()
    if (conn := await pg_driver.driver(session)) is not None:
        await conn.execute(_PG_ADD_IDENTIFIERS, {
            "cid": contact_id, "now": now, "kinds": [k.value for k, _, _ in channels],
            "values": [v for _, v, _ in channels], "devices": [d for _, _, d in channels]})
        return
    await session.execute(db.insert_ignore(Identifier, ["contact_id", "kind", "value"]), [
        {"contact_id": contact_id, "kind": k.value, "value": v, "device": d, "created_at": now}
        for k, v, d in channels])


async def channels_of(session: AsyncSession, contact_id: int) -> list[Identifier]:
    return (await channels_of_many(session, [contact_id]))[contact_id]


async def channels_of_many(session: AsyncSession, contact_ids: Sequence[int]) -> dict[int, list[Identifier]]:
    """The channels of several contacts in one query (a search page), each contact's in insertion order."""
    out: dict[int, list[Identifier]] = {cid: [] for cid in contact_ids}
    if contact_ids:
        rows = await session.execute(select(Identifier).where(col(Identifier.contact_id).in_(contact_ids))
                                     .order_by(col(Identifier.id)))
        for ident in rows.scalars():
            out[ident.contact_id].append(ident)
    return out


async def open_links(session: AsyncSession, visitor_ids: Iterable[str]) -> list[VisitorLink]:
    vids = list(visitor_ids)
    if not vids:
        return []
    return list((await session.execute(select(VisitorLink).where(
        col(VisitorLink.visitor_id).in_(vids), col(VisitorLink.unlinked_at).is_(None)
    ))).scalars())


async def visitors_of(session: AsyncSession, contact_id: int, *, open_only: bool = True) -> list[str]:
    q = select(col(VisitorLink.visitor_id)).where(col(VisitorLink.contact_id) == contact_id)
    if open_only:
        q = q.where(col(VisitorLink.unlinked_at).is_(None))
    return list(dict.fromkeys((await session.execute(q.order_by(col(VisitorLink.id)))).scalars()))


async def groups_of(session: AsyncSession, contact_id: int) -> list[Group]:
    return list((await session.execute(
        select(Group).join(GroupMember, col(GroupMember.group_id) == col(Group.id))
        .where(col(GroupMember.contact_id) == contact_id).order_by(col(Group.id))
    )).scalars())


async def group_names(session: AsyncSession, ids: Sequence[int]) -> dict[int, str]:
    """The names of the groups among these ids (those that exist)."""
    if not ids:
        return {}
    rows = await session.execute(select(col(Group.id), col(Group.name)).where(col(Group.id).in_(list(ids))))
    return {gid: name for gid, name in rows if gid is not None}


async def ensure_groups(db: Database, session: AsyncSession, names: Sequence[str]) -> list[int]:
    """Ids of the named groups, creating the missing ones as static (concurrent creators are harmless); a name
    that is a dynamic group's gives its id, which ``add_to_groups`` then leaves out."""
    if not names:
        return []
    await session.execute(db.insert_ignore(Group, ["name"]),
                          [{"name": n, "type": "static", "created_at": now_ms()} for n in names])
    rows = await session.execute(select(col(Group.id), col(Group.name)).where(col(Group.name).in_(names)))
    ids = {name: gid for gid, name in rows if gid is not None}
    return [ids[n] for n in names]


async def add_to_groups(db: Database, session: AsyncSession, contact_id: int, group_ids: Sequence[int],
                        form_type: str | None) -> None:
    """Put the contact in those of the groups that still exist and are static (``groups.joinable``)."""
    if joinable := await groups.joinable(db, session, group_ids):
        await session.execute(db.insert_ignore(GroupMember, ["group_id", "contact_id"]), [
            {"group_id": g, "contact_id": contact_id, "form_type": form_type, "added_at": now_ms()}
            for g in dict.fromkeys(group_ids) if g in joinable])


@dataclass
class MergeRecord:
    """What a merge moved from the loser to the winner, in the shape the audit log keeps for an undo.

    ``identifiers`` are the loser's channels, each saying whether the winner already had it (an undo must
    leave those); ``timeline_rows`` are the ids of the loser's timeline rows now on the winner (row ids do
    not change); ``dropped_events`` the loser's event ids the winner already had, deleted as duplicates;
    ``groups`` the loser's group ids, with those the winner was already in; ``orders`` the ids of the
    loser's orders, now the winner's.
    """

    identifiers: list[dict[str, Any]] = field(default_factory=list)
    visitors: list[str] = field(default_factory=list)
    timeline_rows: list[int] = field(default_factory=list)
    dropped_events: list[str] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    orders: list[int] = field(default_factory=list)

    def detail(self) -> dict[str, Any]:
        return {"identifiers": self.identifiers, "visitorIds": self.visitors, "timelineRowIds": self.timeline_rows,
                "droppedDuplicateEventIds": self.dropped_events, "groups": self.groups, "orderIds": self.orders}


async def merge_into(db: Database, session: AsyncSession, loser_id: int, winner_id: int) -> MergeRecord:
    """Fold an unidentified contact into the winner: identifiers, visitors, timeline, groups, orders, sends.

    Returns what moved; its ``visitors`` are the loser's open visitor ids, which the caller re-links to the
    winner in Redis.
    """
    now = now_ms()
    record = MergeRecord()
    had = {(i.kind, i.value) for i in await channels_of(session, winner_id)}
    idents = await channels_of(session, loser_id)
    record.identifiers = [{"kind": i.kind, "value": i.value, "device": i.device,
                           "alreadyOnWinner": (i.kind, i.value) in had} for i in idents]
    await add_identifiers(db, session, winner_id,
                          [(IdentifierKind(i.kind), i.value, i.device) for i in idents])
    await session.execute(delete(Identifier).where(col(Identifier.contact_id) == loser_id))
    record.visitors = await visitors_of(session, loser_id)
    await session.execute(update(VisitorLink).where(
        col(VisitorLink.contact_id) == loser_id, col(VisitorLink.unlinked_at).is_(None)
    ).values(unlinked_at=now))
    if record.visitors:
        session.add_all([VisitorLink(visitor_id=v, contact_id=winner_id, linked_at=now) for v in record.visitors])
    # the same event on both timelines (a beacon retried across the merge) stays once, on the winner
    winner_events = select(col(TimelineEvent.event_id)).where(col(TimelineEvent.contact_id) == winner_id)
    duplicates = (col(TimelineEvent.contact_id) == loser_id, col(TimelineEvent.event_id).in_(winner_events))
    record.dropped_events = list((await session.execute(
        select(col(TimelineEvent.event_id)).where(*duplicates).order_by(col(TimelineEvent.id)))).scalars())
    await session.execute(delete(TimelineEvent).where(*duplicates))
    record.timeline_rows = [i for i in (await session.execute(
        update(TimelineEvent).where(col(TimelineEvent.contact_id) == loser_id)
        .values(contact_id=winner_id).returning(col(TimelineEvent.id)))).scalars() if i is not None]
    record.timeline_rows.sort()
    member_of = set((await session.execute(select(col(GroupMember.group_id)).where(
        col(GroupMember.contact_id) == winner_id))).scalars())
    groups = [g.group_id for g in (await session.execute(
        select(GroupMember).where(col(GroupMember.contact_id) == loser_id))).scalars()]
    record.groups = [{"id": g, "alreadyMember": g in member_of} for g in groups]
    await add_to_groups(db, session, winner_id, groups, None)
    await session.execute(delete(GroupMember).where(col(GroupMember.contact_id) == loser_id))
    record.orders = sorted(i for i in (await session.execute(
        update(Order).where(col(Order.contact_id) == loser_id)
        .values(contact_id=winner_id).returning(col(Order.id)))).scalars() if i is not None)
    await session.execute(update(OutboxEntry).where(col(OutboxEntry.contact_id) == loser_id)
                          .values(contact_id=winner_id))  # the sends go with the person, as orders do
    await session.execute(update(Contact).where(col(Contact.id) == loser_id)
                          .values(merged_into_id=winner_id, updated_at=now))
    return record


MAX_MERGE_CHAIN = 64  # a chain longer than this (or a cycle, which merges never make) names no one


async def merge_winners(session: AsyncSession, contact_ids: Iterable[int]) -> dict[int, int]:
    """THE merge chain: each of these contacts mapped to the unmerged contact it is (itself) or was merged into,
    set-wise (one query per link of the longest chain); an id that does not exist, or whose chain ends in an
    erased contact, is left out. Soft-deleted contacts are kept: each caller decides what they mean."""
    merged_into: dict[int, int | None] = {}
    missing: set[int] = set()
    head = {cid: cid for cid in contact_ids}  # each asked id -> how far along its chain it has got
    winners: dict[int, int] = {}
    for _ in range(MAX_MERGE_CHAIN):
        unknown = sorted(set(head.values()) - merged_into.keys() - missing)
        if unknown:
            rows = {cid: into for cid, into in await session.execute(
                select(col(Contact.id), col(Contact.merged_into_id)).where(col(Contact.id).in_(unknown)))
                if cid is not None}
            merged_into.update(rows)
            missing.update(set(unknown) - rows.keys())
        moved: dict[int, int] = {}
        for asked, at in head.items():
            if at in missing:
                continue
            nxt = merged_into[at]
            if nxt is None:
                winners[asked] = at
            else:
                moved[asked] = nxt
        head = moved
        if not head:
            break
    return winners


async def resolve_merged(session: AsyncSession, contact_id: int) -> Contact | None:
    """The live contact that ``contact_id`` is or was merged into (None if erased)."""
    winner = (await merge_winners(session, [contact_id])).get(contact_id)
    return await session.get(Contact, winner) if winner is not None else None


async def count(session: AsyncSession, query: Any) -> int:
    return int((await session.execute(select(func.count()).select_from(query.subquery()))).scalar_one())
