"""What the exports read from the service's database: the rows changed inside a window of the change
sequence (migration 0009's triggers stamp them), in ``(change_seq, id)`` order, and the tombstones of
deleted rows.

A run reads in one snapshot (``snapshot``): PostgreSQL's repeatable read, SQLite's read transaction, and
its ``Horizon``: every stamp below ``below`` is visible and final except those of the transactions still
``running`` (PostgreSQL's snapshot ``xmax`` and in-progress list, cluster-wide; SQLite's counter + 1 and
none). A later write stamps at or above ``below``; a running transaction's rows, once it commits, carry a
stamp below it, which is why a watermark keeps them as ``pending`` until a run sees them committed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, delete, func, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from stitcher.store.db import Database
from stitcher.store.models import ExportSource, ExportTombstone, Group, GroupMember, Identifier, TimelineEvent
from stitcher.store.tables import CONTACTS, ORDERS

TIMELINE: Table = TimelineEvent.__table__  # type: ignore[attr-defined]
TOMBSTONES: Table = ExportTombstone.__table__  # type: ignore[attr-defined]
SOURCES: Mapping[str, Table] = {"contacts": CONTACTS, "timeline": TIMELINE, "orders": ORDERS,
                                "tombstones": TOMBSTONES}


@dataclass(frozen=True)
class Horizon:
    below: int
    running: tuple[int, ...] = ()


@dataclass(frozen=True)
class Window:
    """The rows of one run of one stream: changed after ``cursor`` or stamped by a ``pending`` transaction,
    and final in the run's ``horizon``."""

    cursor: tuple[int, int]
    pending: tuple[int, ...]
    horizon: Horizon


@asynccontextmanager
async def snapshot(db: Database) -> AsyncIterator[tuple[AsyncSession, Horizon]]:
    """A read-only session on one snapshot of the database, and what that snapshot knows is final."""
    async with db.sessions() as session:
        if db.dialect == "postgresql":
            await session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            row = (await session.execute(text(
                "SELECT pg_snapshot_xmax(s)::text::bigint, "
                "array(SELECT x::text::bigint FROM pg_snapshot_xip(s) AS x) FROM pg_current_snapshot() AS s"))).one()
            yield session, Horizon(int(row[0]), tuple(sorted(row[1])))
        else:  # the driver begins transactions only for writes: one read transaction, one WAL snapshot
            await session.execute(text("BEGIN"))
            yield session, Horizon(int((await session.execute(text("SELECT value + 1 FROM export_seq"))).scalar_one()))


def _seq(table: Table) -> Any:
    return table.c.seq if table is TOMBSTONES else table.c.change_seq


def _in(table: Table, window: Window) -> tuple[Any, ...]:
    seq = _seq(table)
    changed = tuple_(seq, table.c.id) > tuple_(*window.cursor)
    if window.pending:
        changed = changed | seq.in_(window.pending)
    final: list[Any] = [seq < window.horizon.below]
    if window.horizon.running:
        final.append(seq.not_in(window.horizon.running))
    return (changed, *final)


async def count(session: AsyncSession, source: str, window: Window) -> int:
    """How many rows of ``source`` are in the window."""
    table = SOURCES[source]
    return int((await session.execute(select(func.count()).select_from(table)
                                      .where(*_in(table, window)))).scalar_one())


async def changes(session: AsyncSession, source: str, window: Window, batch_rows: int
                  ) -> AsyncIterator[list[dict[str, Any]]]:
    """The rows of ``source`` in the window, oldest change first, in lists of up to ``batch_rows``, each row
    with its ``cursor`` (its ``(change_seq, id)``). One query read as it goes (a server-side cursor): the
    contacts' ``change_seq`` has no index (migration 0010), so a query per batch would scan them each time."""
    table = SOURCES[source]
    seq = _seq(table)
    result = await session.stream(select(table).where(*_in(table, window)).order_by(seq, table.c.id)
                                  .execution_options(yield_per=batch_rows))
    async for part in result.mappings().partitions(batch_rows):
        rows = [dict(row) for row in part]
        for row in rows:
            row["cursor"] = (row["seq"] if table is TOMBSTONES else row["change_seq"], row["id"])
        yield rows


@dataclass(frozen=True)
class Identity:
    """This database as a source: its random id (migration 0010) and the last tombstone pruned."""

    source_id: str
    pruned: tuple[int, int]


_SOURCE = ExportSource.__table__  # type: ignore[attr-defined]


async def identity(session: AsyncSession) -> Identity:
    row = (await session.execute(select(_SOURCE.c.source_id, _SOURCE.c.pruned_seq, _SOURCE.c.pruned_id))).one()
    return Identity(row[0], (int(row[1]), int(row[2])))


async def prune(db: Database, older_than_ms: int) -> int:
    """Delete the tombstones written more than ``older_than_ms`` ago, remembering the last one deleted (a
    target that had not read it has missed deletes); how many went."""
    cutoff = int(time.time() * 1000) - older_than_ms
    async with db.transaction() as session:
        old = TOMBSTONES.c.at < cutoff
        last = (await session.execute(select(TOMBSTONES.c.seq, TOMBSTONES.c.id).where(old)
                                      .order_by(TOMBSTONES.c.seq.desc(), TOMBSTONES.c.id.desc()).limit(1))).first()
        if last is None:
            return 0
        gone = getattr(await session.execute(delete(TOMBSTONES).where(old)), "rowcount", 0)
        await session.execute(update(_SOURCE).where(tuple_(_SOURCE.c.pruned_seq, _SOURCE.c.pruned_id)
                                                    < tuple_(last[0], last[1]))
                              .values(pruned_seq=last[0], pruned_id=last[1]))
        return int(gone)


async def channels_and_groups(session: AsyncSession, contact_ids: Sequence[int]
                              ) -> tuple[dict[int, list[dict[str, str]]], dict[int, list[str]]]:
    """The channels (``{type, value}``, in the order added) and group names of these contacts."""
    channels: dict[int, list[dict[str, str]]] = {cid: [] for cid in contact_ids}
    groups: dict[int, list[str]] = {cid: [] for cid in contact_ids}
    if contact_ids:
        for cid, kind, value in await session.execute(
                select(col(Identifier.contact_id), col(Identifier.kind), col(Identifier.value))
                .where(col(Identifier.contact_id).in_(contact_ids)).order_by(col(Identifier.id))):
            channels[cid].append({"type": kind, "value": value})
        for cid, name in await session.execute(
                select(col(GroupMember.contact_id), col(Group.name))
                .join(Group, col(Group.id) == col(GroupMember.group_id))
                .where(col(GroupMember.contact_id).in_(contact_ids)).order_by(col(Group.name))):
            groups[cid].append(name)
    return channels, groups
