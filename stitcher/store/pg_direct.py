"""Statements sent straight on the asyncpg connection under a session (PostgreSQL only), inside the session's
transaction: binary ``COPY`` of row tuples into a table, and statements bound with one array per column.

No SQLAlchemy compile, bind processing or per-row parameter dicts: what a thousand-row write costs in Python
is asyncpg encoding the values. asyncpg keeps each statement prepared (its statement cache, keyed by the
SQL text) and ``COPY``'s column-type lookup too. A unique violation is raised as SQLAlchemy's
``IntegrityError`` (what the callers' retries expect); deadlocks keep their text, which ``is_contention``
reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession


async def _driver(session: AsyncSession) -> Any:
    """The session's asyncpg connection, its transaction begun (SQLAlchemy begins it with the first
    statement: one is run here if none was)."""
    pooled = await (await session.connection()).get_raw_connection()
    if getattr(pooled.dbapi_connection, "_transaction", None) is None:
        await session.execute(text("SELECT 1"))
    return pooled.driver_connection


@asynccontextmanager
async def _statement(sql: str) -> AsyncIterator[None]:
    try:
        yield
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise IntegrityError(sql, None, exc) from exc


async def copy(session: AsyncSession, table: str, columns: Sequence[str], records: Iterable[tuple[Any, ...]]) -> None:
    """``COPY table (columns) FROM STDIN`` of these tuples (JSON columns take JSON text)."""
    conn = await _driver(session)
    async with _statement(f"COPY {table}"):
        await conn.copy_records_to_table(table, columns=list(columns), records=records)


async def fetch(session: AsyncSession, sql: str, *args: Any) -> list[Any]:
    """The rows of ``sql`` (``$1``, ``$2`` … bound to ``args``, lists as arrays), as asyncpg records."""
    conn = await _driver(session)
    async with _statement(sql):
        return list(await conn.fetch(sql, *args))


async def execute(session: AsyncSession, sql: str, *args: Any) -> None:
    """Run ``sql`` with ``args`` (as ``fetch``), discarding any rows."""
    conn = await _driver(session)
    async with _statement(sql):
        await conn.execute(sql, *args)
