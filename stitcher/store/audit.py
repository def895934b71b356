"""The identity log's rows (DESIGN invariant 9), collected while a transaction runs and written in one insert
just before it commits (``Database.transaction``): a call that creates, links and merges pays one statement
for its audit, and a rolled-back transaction leaves none."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from stitcher.store.tables import AUDIT

_PENDING = "stitcher.audit"  # the session.info key of the rows waiting for the commit
_INSERT = insert(AUDIT)


def record(session: AsyncSession, contact_id: int, action: str, request_id: str | None, **detail: Any) -> None:
    """Log an identity change of ``contact_id``; it is written with the transaction, in the order recorded."""
    session.info.setdefault(_PENDING, []).append({
        "contact_id": contact_id, "action": action, "detail": detail or None, "at": int(time.time() * 1000),
        "request_id": request_id})


async def write(session: AsyncSession) -> None:
    """Insert the rows recorded in this session so far (the transaction calls it before its commit)."""
    if rows := session.info.pop(_PENDING, None):
        await session.execute(_INSERT, rows)
