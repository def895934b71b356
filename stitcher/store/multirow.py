"""Many rows into one table in one statement: a binary ``COPY`` (or ``unnest`` over one array per column, to
skip conflicts) on PostgreSQL, a Core executemany on SQLite. The import's rows, its results and every
transaction's identity-log rows go this way; rows whose new ids the caller needs (orders, the contacts orders
create) go through ``insert_returning_ids``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import JSON, Integer, Table, insert
from sqlalchemy.ext.asyncio import AsyncSession

from stitcher.store import pg_driver

if TYPE_CHECKING:  # the Database writes its transactions' audit rows through this module
    from stitcher.store.db import Database


def _pg_type(table: Table, column: str) -> str:
    """The PostgreSQL array element type a column's values travel as (JSON travels as text, cast after)."""
    kind = table.c[column].type
    if isinstance(kind, JSON):
        return "jsonb"
    return "bigint" if isinstance(kind, Integer) else "text"  # BigInteger is an Integer


def pg_arrays(table: Table, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """One array per column: the column's values of every row (JSON encoded to text)."""
    arrays: list[list[Any]] = []
    for c in columns:
        values = [row[c] for row in rows]
        if _pg_type(table, c) == "jsonb":
            values = [None if v is None else orjson.dumps(v).decode() for v in values]
        arrays.append(values)
    return arrays


def pg_unnest(table: Table, columns: Sequence[str], first: int = 1) -> str:
    """``unnest($first::…[], …) AS u(c0, c1, …)`` over one array parameter per column."""
    arrays = ", ".join(f"${first + i}::{'text' if _pg_type(table, c) == 'jsonb' else _pg_type(table, c)}[]"
                       for i, c in enumerate(columns))
    return f"unnest({arrays}) AS u({', '.join(f'c{i}' for i in range(len(columns)))})"


def pg_value(table: Table, column: str, i: int) -> str:
    return f"u.c{i}::jsonb" if _pg_type(table, column) == "jsonb" else f"u.c{i}"


async def insert_many(db: Database, session: AsyncSession, table: Table, rows: Sequence[Mapping[str, Any]],
                      *, ignore: Sequence[str] | None = None) -> None:
    """Insert rows (dicts with the same keys) in one statement: without ``ignore`` as ``insert_rows`` does;
    with it (the unique columns whose conflicts are skipped, ``ON CONFLICT … DO NOTHING``) an ``unnest``
    over one array per column on PostgreSQL, sent on the driver connection (``pg_driver``), and a Core
    executemany on SQLite."""
    if not rows:
        return
    columns = tuple(rows[0])
    if not ignore:
        await insert_rows(db, session, table, columns, [tuple(row[c] for c in columns) for row in rows])
    elif db.dialect != "postgresql":
        await session.execute(db.insert_ignore(table, ignore), list(rows))
    else:
        driver = await pg_driver.require(session)
        await driver.execute_sql(_pg_insert(table, columns, tuple(ignore)), *pg_arrays(table, columns, rows))


async def insert_rows(db: Database, session: AsyncSession, table: Table, columns: Sequence[str],
                      rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert rows given as tuples of ``columns``' values: a binary ``COPY`` on PostgreSQL (JSON values
    encoded here), a Core executemany on SQLite."""
    if not rows:
        return
    if db.dialect != "postgresql":
        await session.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])
        return
    json = [i for i, c in enumerate(columns) if _pg_type(table, c) == "jsonb"]
    if json:
        encoded = [list(row) for row in rows]
        for row in encoded:
            for i in json:
                if row[i] is not None:
                    row[i] = orjson.dumps(row[i]).decode()
        rows = [tuple(row) for row in encoded]
    await (await pg_driver.require(session)).copy(table.name, columns, rows)


@lru_cache(maxsize=64)
def _pg_insert(table: Table, columns: tuple[str, ...], ignore: tuple[str, ...]) -> str:
    """The ``INSERT … SELECT … FROM unnest(…) ON CONFLICT … DO NOTHING`` of these columns, built once."""
    values = ", ".join(pg_value(table, c, i) for i, c in enumerate(columns))
    return (f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT {values} FROM {pg_unnest(table, columns)} "
            f"ON CONFLICT ({', '.join(ignore)}) DO NOTHING")


async def insert_returning_ids(db: Database, session: AsyncSession, table: Table,
                               rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert rows of a table with an autoincrement ``id`` in one or two multi-row statements; their ids, in
    the order of ``rows``.

    PostgreSQL returns the ids of a multi-row INSERT in parameter order. SQLite cannot promise an order for
    RETURNING (SQLAlchemy then falls back to one INSERT a row), so there the first row is inserted alone and
    the others are given the ids that follow it: its write lock, taken by that first insert, keeps every
    other writer out until the commit, and AUTOINCREMENT never hands out an id at or below one it gave.
    """
    if not rows:
        return []
    if db.dialect == "postgresql":
        result = await session.execute(insert(table).returning(table.c.id, sort_by_parameter_order=True), list(rows))
        return [int(i) for i in result.scalars()]
    first = int((await session.execute(insert(table).returning(table.c.id), [rows[0]])).scalar_one())
    ids = list(range(first, first + len(rows)))
    if len(rows) > 1:
        await session.execute(insert(table), [{**row, "id": i} for row, i in zip(rows[1:], ids[1:], strict=True)])
    return ids
