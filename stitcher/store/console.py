"""The console's reads (SPEC §4a): who a visitor id names, when each visitor first became known, a contact's
activity per day, held events and running imports. Contacts, timelines and identity logs come from
``stitcher.views`` as the API reads them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from stitcher.store import repo
from stitcher.store.import_sessions import RUNNING
from stitcher.store.models import ApiEvent, ImportSession, TimelineEvent, VisitorLink

DAY_MS = 86_400_000


async def contact_of_visitor(s: AsyncSession, vid: str) -> int | None:
    """The live contact a visitor is linked to now (following merges), else None."""
    holder = (await s.execute(select(col(VisitorLink.contact_id)).where(
        col(VisitorLink.visitor_id) == vid, col(VisitorLink.unlinked_at).is_(None)))).scalar_one_or_none()
    if holder is None:
        return None
    contact = await repo.resolve_merged(s, holder)
    if contact is None or contact.deleted_at is not None:
        return None
    return contact.id


async def first_links(s: AsyncSession, vids: Iterable[str]) -> dict[str, int]:
    """When each visitor was first linked to anybody (ms): its events received before were anonymous.

    Any contact, not only the one whose timeline is shown: a merge re-links the loser's visitors to the
    winner at the merge's time, and what they did after the loser's link was not anonymous.
    """
    wanted = sorted(set(vids))
    if not wanted:
        return {}
    rows = await s.execute(select(col(VisitorLink.visitor_id), func.min(col(VisitorLink.linked_at)))
                           .where(col(VisitorLink.visitor_id).in_(wanted)).group_by(col(VisitorLink.visitor_id)))
    return {vid: int(at) for vid, at in rows}


async def activity_per_day(s: AsyncSession, contact_id: int) -> list[tuple[int, bool, int]]:
    """``(day number since the epoch, anonymous?, events)`` of a contact's whole timeline, oldest day first;
    anonymous as ``first_links`` tells it, counted in SQL so a long history costs one grouped scan."""
    t = TimelineEvent
    first = (select(func.min(col(VisitorLink.linked_at)))
             .where(col(VisitorLink.visitor_id) == col(t.visitor_id)).scalar_subquery())
    anonymous = case((and_(col(t.source) == "web", col(t.visitor_id).is_not(None),
                           col(t.received_at) < func.coalesce(first, 2**62)), 1), else_=0)
    day = col(t.occurred_at) // DAY_MS
    rows = await s.execute(select(day, anonymous, func.count())
                           .where(col(t.contact_id) == contact_id).group_by(day, anonymous).order_by(day))
    return [(int(d), bool(a), int(n)) for d, a, n in rows]


async def held_count(s: AsyncSession) -> int:
    """Events posted for people not known yet, waiting for them."""
    return int((await s.execute(select(func.count()).where(col(ApiEvent.held_key).is_not(None)))).scalar_one())


async def running_imports(s: AsyncSession) -> list[dict[str, Any]]:
    """Imports still running, oldest first, with their progress (not their request: rows of JSON)."""
    i = ImportSession
    rows = await s.execute(select(col(i.id), col(i.status), col(i.next_row), col(i.total), col(i.created),
                                  col(i.updated), col(i.failed), col(i.created_at), col(i.updated_at))
                           .where(col(i.status).in_(RUNNING)).order_by(col(i.created_at)))
    return [r._asdict() for r in rows]
