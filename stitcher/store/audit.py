"""The identity log's rows (DESIGN invariant 9), collected while a transaction runs and written in one insert
just before it commits (``Database.transaction``): every writer (the single-contact calls, the import's
chunks, the orders) records, this one insert writes — a call that creates, links and merges pays one
statement for its audit, a chunk of a thousand rows one ``unnest`` on PostgreSQL, and a rolled-back
transaction leaves none."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from stitcher.store.multirow import insert_rows
from stitcher.store.tables import AUDIT

if TYPE_CHECKING:  # the Database calls ``write`` from its transactions
    from stitcher.store.db import Database

_PENDING = "stitcher.audit"  # the session.info key of the rows waiting for the commit
_COLUMNS = ("contact_id", "action", "detail", "at", "request_id")


def record(session: AsyncSession, contact_id: int, action: str, request_id: str | None, **detail: Any) -> None:
    """Log an identity change of ``contact_id``; it is written with the transaction, in the order recorded."""
    record_all(session, [(contact_id, action, detail or None)], request_id)


def record_all(session: AsyncSession, entries: Iterable[tuple[int, str, dict[str, Any] | None]],
               request_id: str | None, at: int | None = None) -> None:
    """Log identity changes given as (contact id, action, detail), at ``at`` (ms; default now)."""
    when = int(time.time() * 1000) if at is None else at
    session.info.setdefault(_PENDING, []).extend((c, a, d, when, request_id) for c, a, d in entries)


async def write(db: Database, session: AsyncSession) -> None:
    """Insert the rows recorded in this session so far (the transaction calls it before its commit)."""
    if rows := session.info.pop(_PENDING, None):
        await insert_rows(db, session, AUDIT, _COLUMNS, rows)
