"""The SQL of bulk-import sessions: an import's request and progress (``imports``) and its per-row results
(``import_rows``), which a chunk writes in its own transaction so that progress and rows never disagree."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stitcher.store.db import Database
from stitcher.store.models import ImportRow, ImportSession
from stitcher.store.multirow import insert_rows

IMPORTS: Table = ImportSession.__table__  # type: ignore[attr-defined]
ROWS: Table = ImportRow.__table__  # type: ignore[attr-defined]
RUNNING = ("STARTED", "IMPORTING")
COUNTERS = ("created", "updated", "restored", "skipped", "failed")
_ROW_COLUMNS = ("import_id", "idx", "contact_id", "action", "error")


async def create(s: AsyncSession, import_id: str, total: int, request: Mapping[str, Any], request_id: str | None,
                 now: int) -> None:
    """A new import, ``STARTED``, keeping its request until it ends."""
    await s.execute(insert(IMPORTS).values(
        id=import_id, status="STARTED", total=total, next_row=0, request=dict(request), request_id=request_id,
        created_at=now, updated_at=now, **dict.fromkeys(COUNTERS, 0)))


async def unfinished(s: AsyncSession) -> list[str]:
    """The imports not ended yet, oldest first."""
    return list((await s.execute(select(IMPORTS.c.id).where(IMPORTS.c.status.in_(RUNNING))
                                 .order_by(IMPORTS.c.created_at))).scalars())


async def load(s: AsyncSession, import_id: str) -> Any:
    """An import's request, progress (``next_row``), ``total``, ``request_id`` and ``status`` (a row), or None."""
    return (await s.execute(select(IMPORTS.c.request, IMPORTS.c.next_row, IMPORTS.c.total, IMPORTS.c.request_id,
                                   IMPORTS.c.status).where(IMPORTS.c.id == import_id))).one_or_none()


async def next_row(s: AsyncSession, import_id: str) -> int | None:
    """The first row not applied yet (read under the import's key lock); None once the import has ended, so
    that another runner of it (a second process resuming it) applies nothing after an ERROR."""
    row = (await s.execute(select(IMPORTS.c.next_row, IMPORTS.c.status).where(IMPORTS.c.id == import_id))).one()
    return int(row.next_row) if row.status in RUNNING else None


async def record_chunk(db: Database, s: AsyncSession, import_id: str, end: int,
                       results: Sequence[tuple[int, int | None, str, str | None]], counts: Mapping[str, int],
                       now: int) -> None:
    """A chunk's per-row results (index, contact id, action, error), its counts added to the import's, and the
    import's progress moved to ``end``."""
    await insert_rows(db, s, ROWS, _ROW_COLUMNS, [(import_id, *r) for r in results])
    await s.execute(update(IMPORTS).where(IMPORTS.c.id == import_id).values(
        next_row=end, status="IMPORTING", updated_at=now,
        **{name: getattr(IMPORTS.c, name) + counts.get(name, 0) for name in COUNTERS}))


async def end(s: AsyncSession, import_id: str, status: str, description: str, now: int) -> None:
    """End an import (``FINISHED`` or ``ERROR``); its request is no longer needed. The first end wins: an
    import one runner ended is never ended again by another (an ERROR never turns FINISHED)."""
    await s.execute(update(IMPORTS).where(IMPORTS.c.id == import_id, IMPORTS.c.status.in_(RUNNING)).values(
        status=status, description=description, request=None, updated_at=now))


async def report(s: AsyncSession, import_id: str) -> tuple[Any, list[Any]] | None:
    """An import and its per-row results in row order; None if there is no such import."""
    # every column but the request (up to 3,000 rows of JSON, kept until the import ends): a status poll
    # must not read it
    imp = (await s.execute(select(*(c for c in IMPORTS.c if c.name != "request"))
                           .where(IMPORTS.c.id == import_id))).one_or_none()
    if imp is None:
        return None
    rows = (await s.execute(select(ROWS.c.idx, ROWS.c.contact_id, ROWS.c.action, ROWS.c.error)
                            .where(ROWS.c.import_id == import_id).order_by(ROWS.c.idx))).all()
    return imp, list(rows)
