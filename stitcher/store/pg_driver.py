"""Statements sent straight through the asyncpg connection under a PostgreSQL session's transaction.

A statement sent through SQLAlchemy's async layer costs ~150-300 µs of Python (a greenlet switch, the
compiled-cache lookup, parameter and result processing) before asyncpg sends it; sent through asyncpg itself
it costs a fraction of that, and asyncpg keeps it prepared per connection, so PostgreSQL neither parses nor
plans it again. The hot path's statements (one contact's add/update) go this way on PostgreSQL, and so do the
import's set-based writes (binary ``COPY`` of row tuples, statements bound with one array per column:
``copy``, ``fetch_sql``, ``execute_sql``); SQLite keeps SQLAlchemy's path.

They run in the session's own transaction: ``connection`` makes sure its ``BEGIN`` has been sent (SQLAlchemy's
asyncpg adapter sends it lazily, with the first statement) and flushes what the ORM has pending, so a raw
statement sees the session's earlier writes and rolls back or commits with the session. Statements are
SQLAlchemy constructs compiled once for asyncpg (``$n`` parameters, in the order ``compiled`` names them), so
the SQL has one definition for both paths. A database error comes out as SQLAlchemy's exception of the same
kind (``IntegrityError``, ``OperationalError`` …), as it would from ``session.execute``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import asyncpg
from sqlalchemy import exc
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ClauseElement

_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]
_DRIVER = "stitcher.pg_driver"  # session.info: the Driver of the session's connection


class Driver:
    """The asyncpg connection of one session's transaction; errors come out as SQLAlchemy's."""

    __slots__ = ("_adapter",)

    def __init__(self, adapter: Any) -> None:
        self._adapter = adapter  # SQLAlchemy's adapter around the asyncpg connection

    async def fetch(self, statement: ClauseElement, params: Mapping[str, Any]) -> list[asyncpg.Record]:
        """The rows of ``statement`` (``row["column"]``)."""
        return list(await self._send("fetch", statement, params))

    async def fetchrow(self, statement: ClauseElement, params: Mapping[str, Any]) -> asyncpg.Record | None:
        """The first row of ``statement``, None if it has none."""
        return await self._send("fetchrow", statement, params)

    async def fetchval(self, statement: ClauseElement, params: Mapping[str, Any]) -> Any:
        """The first column of the first row of ``statement``."""
        return await self._send("fetchval", statement, params)

    async def execute(self, statement: ClauseElement, params: Mapping[str, Any]) -> None:
        """Run ``statement`` for its effect."""
        await self._send("execute", statement, params)

    async def fetch_sql(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """The rows of ``sql`` written for asyncpg (``$1``, ``$2`` … bound to ``args``, lists as arrays)."""
        return list(await self._call(sql, "fetch", sql, *args))

    async def execute_sql(self, sql: str, *args: Any) -> None:
        """Run ``sql`` written for asyncpg (as ``fetch_sql``) for its effect."""
        await self._call(sql, "execute", sql, *args)

    async def copy(self, table: str, columns: Sequence[str], records: Iterable[tuple[Any, ...]]) -> None:
        """Binary ``COPY table (columns) FROM STDIN`` of these tuples (JSON columns take JSON text)."""
        await self._call(f"COPY {table}", "copy_records_to_table", table, columns=list(columns), records=records)

    async def _send(self, method: str, statement: ClauseElement, params: Mapping[str, Any]) -> Any:
        sql, names = compiled(statement)
        return await self._call(sql, method, sql, *[params[n] for n in names])

    async def _call(self, sql: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """asyncpg's ``method`` on the connection; an error translated as for ``sql``."""
        try:
            return await getattr(self._adapter._connection, method)(*args, **kwargs)
        except Exception as error:
            translated = self._translated(sql, error)
            if translated is None:
                raise
            raise translated from error

    def _translated(self, sql: str, error: Exception) -> exc.StatementError | None:
        """What ``session.execute`` raises for this error (its parameters hidden: invariant 10): a database
        or connection error as SQLAlchemy's ``IntegrityError``, ``InterfaceError`` …; None for the errors
        SQLAlchemy lets through as they are (a timeout)."""
        dbapi = self._adapter.dbapi
        try:
            self._adapter._handle_exception(error)  # raises the adapter's IntegrityError, Error …
        except dbapi.Error as dbapi_error:
            translated: exc.StatementError = exc.DBAPIError.instance(
                sql, None, dbapi_error, dbapi.Error, hide_parameters=True, dialect=_DIALECT)
            return translated
        except Exception:  # raised again by the caller as it is, as SQLAlchemy would
            pass
        return None


async def require(session: AsyncSession) -> Driver:
    """``driver`` where the caller is on PostgreSQL's path already."""
    found = await driver(session)
    assert found is not None, "a PostgreSQL-only statement on another database"
    return found


async def driver(session: AsyncSession) -> Driver | None:
    """The asyncpg connection of the session's transaction, its BEGIN sent and the ORM's pending rows
    flushed; None when the session is not on PostgreSQL (the caller keeps SQLAlchemy's path)."""
    found = session.info.get(_DRIVER)
    if found is None:
        if session.get_bind().dialect.name != "postgresql":
            return None
        # the connection is checked out now: reading its pool entry needs no I/O (and no greenlet)
        checked_out = (await session.connection()).sync_connection
        assert checked_out is not None
        found = session.info[_DRIVER] = Driver(checked_out.connection.dbapi_connection)
    if session.new or session.dirty or session.deleted:
        await session.flush()
    if found._adapter._transaction is None:  # SQLAlchemy's adapter sends BEGIN with its first statement
        await found._adapter._start_transaction()
    return found


@lru_cache(maxsize=256)
def compiled(statement: ClauseElement) -> tuple[str, tuple[str, ...]]:
    """The statement's asyncpg SQL and the names of its parameters in ``$n`` order (compiled once)."""
    c = statement.compile(dialect=_DIALECT)
    return c.string, tuple(getattr(c, "positiontup", None) or ())
