"""The stitch: a visitor's anonymous history from Redis becomes the start of a contact's timeline.

One stitch of visitor V onto contact C runs in one SQL transaction that holds V's identity lock (the same
lock the contacts service takes to link or re-link V), so a re-link cannot slip in between its steps:
1. if C still holds V's open link, ``EventLog.claim`` sets the Redis link and moves the anonymous history
   into C's claim key in one atomic step — a beacon arriving meanwhile goes either into the claim or, after
   the link, into the linked stream (DESIGN invariant 4);
2. C's claim is inserted into C's timeline (ignoring event ids already there) and the link marked stitched;
3. after the commit the claim is released.
A crash anywhere leaves a link without ``stitched_at`` and C's claim in Redis: the retry of the same API
call, or the worker's sweeper, runs the steps again and duplicates nothing (invariant 5).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import structlog
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from stitcher.store import identity_keys, repo
from stitcher.store.db import Database
from stitcher.store.models import TimelineEvent, VisitorLink
from stitcher.store.repo import now_ms
from tracker.eventlog import EventLog

RESEED_PAGE = 1000  # open links read from SQL, and checked in Redis, per round trip
_WEB_DATA = ("url", "ref", "title", "props", "bot", "ts")
log = structlog.get_logger("stitch")


def web_rows(contact_id: int, vid: str, events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Timeline rows for web events as the tracker stored them."""
    rows = []
    for e in events:
        data = {k: e[k] for k in _WEB_DATA if k in e}
        rows.append({"contact_id": contact_id, "event_id": e["id"], "source": "web", "type": e["type"],
                     "occurred_at": e["t"], "received_at": e["rt"], "visitor_id": vid, "data": data})
    return rows


# PostgreSQL: the whole batch as one statement over parallel arrays — one round trip, one plan, no limit on
# the number of bind parameters (executemany would send one INSERT per row)
_PG_INSERT = text("""
    INSERT INTO timeline (contact_id, event_id, source, type, occurred_at, received_at, visitor_id, data)
    SELECT c, e, s, t, o, r, v, d::jsonb
    FROM unnest(CAST(:c AS bigint[]), CAST(:e AS text[]), CAST(:s AS text[]), CAST(:t AS text[]),
                CAST(:o AS bigint[]), CAST(:r AS bigint[]), CAST(:v AS text[]), CAST(:d AS text[]))
         AS u(c, e, s, t, o, r, v, d)
    ON CONFLICT (contact_id, event_id) DO NOTHING
""")
_PG_COLUMNS = (("c", "contact_id"), ("e", "event_id"), ("s", "source"), ("t", "type"), ("o", "occurred_at"),
               ("r", "received_at"), ("v", "visitor_id"))


async def insert_timeline(db: Database, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Insert timeline rows; an event id already on that contact's timeline is skipped (invariant 3)."""
    if not rows:
        return
    if db.dialect == "postgresql":
        params: dict[str, Any] = {p: [row[c] for row in rows] for p, c in _PG_COLUMNS}
        params["d"] = [orjson.dumps(row["data"]).decode() for row in rows]
        await session.execute(_PG_INSERT, params)
        return
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
        """Move ``vid``'s anonymous history onto ``contact_id``'s timeline; returns the events handed over.

        If the visitor has changed hands since, only what was already claimed for ``contact_id`` is moved.
        A collision with another transaction is retried; past the retries it raises ``Contention`` (503).
        """
        count = await self.db.retry(lambda: self._stitch_once(vid, contact_id))
        await self.eventlog.release_claim(vid, contact_id)
        if self.on_stitched is not None:
            self.on_stitched(count)
        return count

    async def _stitch_once(self, vid: str, contact_id: int) -> int:
        async with self.db.transaction() as s:
            await self.db.lock_keys(s, [identity_keys.visitor(vid)])
            holder = (await s.execute(select(col(VisitorLink.contact_id)).where(
                col(VisitorLink.visitor_id) == vid, col(VisitorLink.unlinked_at).is_(None)))).scalar_one_or_none()
            if holder == contact_id:
                await self.eventlog.claim(vid, contact_id)
            else:
                # an earlier owner's claim: each attempt keeps it alive, so a stitch that keeps failing
                # (the sweeper retries it) never outlasts its claim
                await self.eventlog.keep_claim(vid, contact_id)
            if self.pause_ms:
                await asyncio.sleep(self.pause_ms / 1000)
            events = [orjson.loads(raw) for raw in await self.eventlog.read_claim(vid, contact_id)]
            target = await repo.resolve_merged(s, contact_id) if events else None
            if target is not None and target.id is not None:
                await insert_timeline(self.db, s, web_rows(target.id, vid, events))
            await s.execute(update(VisitorLink).where(
                col(VisitorLink.visitor_id) == vid, col(VisitorLink.contact_id) == contact_id,
                col(VisitorLink.stitched_at).is_(None),
            ).values(stitched_at=now_ms()))
        return len(events)

    async def finish_pending(self, older_than_ms: int = 0) -> int:
        """Complete stitches a crash interrupted (links never marked stitched); returns how many ran."""
        query = select(col(VisitorLink.visitor_id), col(VisitorLink.contact_id)).where(
            col(VisitorLink.stitched_at).is_(None), col(VisitorLink.linked_at) <= now_ms() - older_than_ms)
        async with self.db.reader() as session:
            pending = list(await session.execute(query))
        done = 0
        for vid, contact_id in pending:
            try:
                await self.stitch(vid, contact_id)
                done += 1
            except Exception:  # one failing stitch must not hold up the others; the next sweep retries it
                log.exception("pending stitch failed", contact=contact_id)
        return done

    async def reseed_links(self) -> tuple[int, int]:
        """Give Redis back the links SQL holds and Redis lost (a restart without persistence, a lost last
        second of writes), so those visitors' later beacons reach their contacts instead of staying anonymous.

        Each open, stitched link whose Redis link is missing is stitched again: under the visitor's lock it
        re-creates the link only if its contact still holds the visitor, and moves what the visitor sent
        meanwhile (anonymous, as Redis no longer knew it) onto the timeline, each event once. Returns
        (visitors re-linked, stitches that failed — the next sweep tries them again).
        """
        after, relinked, failed = 0, 0, 0
        while True:
            query = select(col(VisitorLink.id), col(VisitorLink.visitor_id), col(VisitorLink.contact_id)).where(
                col(VisitorLink.unlinked_at).is_(None), col(VisitorLink.stitched_at).is_not(None),
                col(VisitorLink.id) > after).order_by(col(VisitorLink.id)).limit(RESEED_PAGE)
            async with self.db.reader() as session:
                page = list(await session.execute(query))
            if not page:
                return relinked, failed
            last = page[-1][0]
            assert last is not None  # a primary key
            after = last
            owners = {vid: contact_id for _, vid, contact_id in page}
            for vid in await self.eventlog.missing_links(list(owners)):
                try:
                    await self.stitch(vid, owners[vid])
                    relinked += 1
                except Exception:  # one failing stitch must not hold up the others
                    log.exception("re-seeding a link failed", contact=owners[vid])
                    failed += 1
