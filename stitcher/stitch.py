"""The stitch: a visitor's anonymous history from Redis becomes the start of a contact's timeline.

Steps, each safe to repeat (DESIGN invariants 4 and 5):
1. ``EventLog.claim`` links the visitor and moves its history into a claim key in one atomic Redis step, so a
   beacon arriving meanwhile goes either into the claim or, after the link, into the linked stream;
2. the claim's events are inserted into the timeline, ignoring event ids already there;
3. the claim is released; 4. the SQL link is marked stitched.
A crash between any two steps leaves a link without ``stitched_at`` and the claim in Redis: the retry of the
same API call, or the worker's sweeper, runs the steps again and duplicates nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import select, update
from sqlmodel import col

from stitcher.store.db import Database
from stitcher.store.models import TimelineEvent, VisitorLink
from stitcher.store.repo import now_ms
from tracker.eventlog import EventLog

_WEB_DATA = ("url", "ref", "title", "props", "bot", "ts")


def web_rows(contact_id: int, vid: str, events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Timeline rows for web events as the tracker stored them."""
    rows = []
    for e in events:
        data = {k: e[k] for k in _WEB_DATA if k in e}
        rows.append({"contact_id": contact_id, "event_id": e["id"], "source": "web", "type": e["type"],
                     "occurred_at": e["t"], "received_at": e["rt"], "visitor_id": vid, "data": data})
    return rows


async def insert_timeline(db: Database, session: Any, rows: list[dict[str, Any]]) -> None:
    """Insert timeline rows; an event id already on that contact's timeline is skipped (invariant 3)."""
    for start in range(0, len(rows), 5000):
        await session.execute(db.insert_ignore(TimelineEvent, ["contact_id", "event_id"]),
                              rows[start:start + 5000])


class Stitcher:
    """Runs stitches; ``pause_ms`` is a test hook that holds a stitch between claim and insert."""

    def __init__(self, db: Database, eventlog: EventLog, pause_ms: int = 0,
                 on_stitched: Callable[[int], None] | None = None) -> None:
        self.db = db
        self.eventlog = eventlog
        self.pause_ms = pause_ms
        self.on_stitched = on_stitched

    async def stitch(self, vid: str, contact_id: int) -> int:
        """Move ``vid``'s anonymous history onto ``contact_id``'s timeline; returns the events handed over."""
        await self.eventlog.claim(vid, contact_id)
        if self.pause_ms:
            await asyncio.sleep(self.pause_ms / 1000)
        events = await self.eventlog.read_claim(vid)
        if events:
            async with self.db.transaction() as session:
                await insert_timeline(self.db, session, web_rows(contact_id, vid, events))
        await self.eventlog.release_claim(vid)
        async with self.db.transaction() as session:
            await session.execute(update(VisitorLink).where(
                col(VisitorLink.visitor_id) == vid, col(VisitorLink.contact_id) == contact_id,
                col(VisitorLink.unlinked_at).is_(None), col(VisitorLink.stitched_at).is_(None),
            ).values(stitched_at=now_ms()))
        if self.on_stitched is not None:
            self.on_stitched(len(events))
        return len(events)

    async def finish_pending(self, older_than_ms: int = 0, visitor_ids: Iterable[str] | None = None) -> int:
        """Complete stitches a crash interrupted (links never marked stitched); returns how many ran."""
        query = select(col(VisitorLink.visitor_id), col(VisitorLink.contact_id)).where(
            col(VisitorLink.unlinked_at).is_(None), col(VisitorLink.stitched_at).is_(None),
            col(VisitorLink.linked_at) <= now_ms() - older_than_ms)
        if visitor_ids is not None:
            visitor_ids = list(visitor_ids)
            if not visitor_ids:
                return 0
            query = query.where(col(VisitorLink.visitor_id).in_(list(visitor_ids)))
        async with self.db.reader() as session:
            pending = list(await session.execute(query))
        for vid, contact_id in pending:
            await self.stitch(vid, contact_id)
        return len(pending)
