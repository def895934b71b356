"""The PostgreSQL target (``stitcher export postgres``): the exported tables in a schema of another
database, and the export's watermarks in a table of its own there (``_stitcher_export``), written in the
same transaction as each batch. A batch is one transaction: its deletes, then per table a binary ``COPY``
into a temporary staging table and one ``INSERT … ON CONFLICT DO UPDATE`` from it."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import asyncpg
import orjson

from stitcher.exports.changes import Batch, Watermark
from stitcher.exports.tables import BY_NAME, POSTGRES_TYPES, TABLES, ExportTable, Kind

STATE = "_stitcher_export"
# what a delete finds its rows by, besides the keys
_INDEXED = (("events", "contact_id"), ("orders", "contact_id"), ("order_items", "contact_id"))


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _ddl(schema: str, table: ExportTable) -> str:
    columns = ", ".join(f"{_q(c.name)} {POSTGRES_TYPES[c.kind]}{' NOT NULL' if c.required else ''}"
                        for c in table.columns)
    key = ", ".join(map(_q, table.key))
    return f"CREATE TABLE {_q(schema)}.{_q(table.name)} ({columns}, PRIMARY KEY ({key}))"


def _encode(table: ExportTable, row: Mapping[str, Any]) -> tuple[Any, ...]:
    """A row as asyncpg's binary COPY takes it (JSON as text)."""
    return tuple(orjson.dumps(row[c.name]).decode() if c.kind is Kind.JSON and row[c.name] is not None
                 else row[c.name] for c in table.columns)


def dsn(url: str) -> str:
    """A libpq URL from a SQLAlchemy one (``postgresql+asyncpg://`` works as well as ``postgresql://``)."""
    scheme, sep, rest = url.partition("://")
    return ("postgresql" if scheme.startswith("postgresql") else scheme) + sep + rest


class BadTarget(ValueError):
    """A target URL or schema that cannot be exported into; the message names what is wrong."""


def check(url: str, schema: str) -> None:
    """Refuse what would export somewhere not meant: a URL that is not ``postgresql://`` (an empty one would
    connect to the local default database), a schema PostgreSQL reserves or would truncate, or with control
    characters."""
    scheme = url.partition("://")[0]
    if "://" not in url or scheme not in ("postgresql", "postgres", "postgresql+asyncpg"):
        raise BadTarget(f"--target must be a postgresql:// URL, not {url[:80]!r}")
    if not schema or len(schema.encode()) > 63 or not schema.isprintable():
        raise BadTarget(f"--schema must be 1 to 63 bytes of printable characters, not {schema[:80]!r}")
    if schema.startswith("pg_") or schema == "information_schema":
        raise BadTarget(f"--schema {schema!r} is PostgreSQL's own")


async def _foreign_tables(conn: asyncpg.Connection, schema: str) -> list[str]:
    """The tables of the schema named as exported ones that lack some of their columns (the service's own
    database, another application's tables): each as ``name (missing: …)``."""
    rows = await conn.fetch("SELECT table_name, array_agg(column_name::text) AS columns "
                            "FROM information_schema.columns WHERE table_schema = $1 AND table_name = ANY($2) "
                            "GROUP BY table_name", schema, [t.name for t in TABLES])
    out = []
    for row in rows:
        missing = [c for c in BY_NAME[row["table_name"]].names if c not in row["columns"]]
        if missing:
            out.append(f"{row['table_name']} (missing: {', '.join(missing)})")
    return out


class PostgresTarget:
    def __init__(self, conn: asyncpg.Connection, schema: str) -> None:
        self._conn, self._schema = conn, schema

    @classmethod
    async def connect(cls, url: str, schema: str) -> PostgresTarget:
        """Connect and create what is missing: the schema, the tables, the cursor table."""
        check(url, schema)
        conn = await asyncpg.connect(dsn(url), timeout=10)
        try:
            foreign = await _foreign_tables(conn, schema)
            if foreign:
                raise BadTarget(f"schema {schema!r} holds tables that are not an export's: {'; '.join(foreign)}")
            await cls._create(conn, schema)
        except BaseException:
            await conn.close()
            raise
        return cls(conn, schema)

    @staticmethod
    async def _create(conn: asyncpg.Connection, schema: str) -> None:
        """Create what is missing, and only that: a user with rights on the tables alone (no CREATE on the
        database or the schema) exports into a schema made for it."""
        s = _q(schema)
        names = [t.name for t in TABLES] + [f"{name}_{column}_idx" for name, column in _INDEXED] + [STATE]
        async with conn.transaction():
            found = {r[0] for r in await conn.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND c.relname = ANY($2)", schema, names)}
            if not await conn.fetchval("SELECT true FROM pg_namespace WHERE nspname = $1", schema):
                await conn.execute(f"CREATE SCHEMA {s}")
            for table in TABLES:
                if table.name not in found:
                    await conn.execute(_ddl(schema, table))
            for name, column in _INDEXED:
                if f"{name}_{column}_idx" not in found:
                    await conn.execute(f"CREATE INDEX {_q(f'{name}_{column}_idx')} ON {s}.{_q(name)} ({_q(column)})")
            if STATE not in found:
                await conn.execute(f"CREATE TABLE {s}.{STATE} (stream text PRIMARY KEY, seq bigint NOT NULL, "
                                   "id bigint NOT NULL, pending bigint[] NOT NULL, "
                                   "at timestamptz NOT NULL DEFAULT now(), source text)")
            elif not await conn.fetchval("SELECT true FROM information_schema.columns WHERE table_schema = $1 "
                                         "AND table_name = $2 AND column_name = 'source'", schema, STATE):
                # the source database the watermarks came from (a target of before it: NULL, taken as this one)
                await conn.execute(f"ALTER TABLE {s}.{STATE} ADD COLUMN source text")

    async def close(self) -> None:
        """Close the connection; one left in the middle of a batch (an interrupted run: a graceful close would
        wait for the COPY forever) is cut, which rolls the batch back."""
        try:
            await asyncio.wait_for(self._conn.close(), 5)
        except Exception:
            self._conn.terminate()

    async def source(self) -> str | None:
        return await self._conn.fetchval(  # type: ignore[no-any-return]
            f"SELECT source FROM {_q(self._schema)}.{STATE} WHERE source IS NOT NULL LIMIT 1")

    async def reset(self) -> None:
        s = _q(self._schema)
        async with self._conn.transaction():
            await self._conn.execute(f"TRUNCATE {', '.join(f'{s}.{_q(t.name)}' for t in TABLES)}, {s}.{STATE}")

    async def watermarks(self) -> dict[str, Watermark]:
        rows = await self._conn.fetch(f"SELECT stream, seq, id, pending FROM {_q(self._schema)}.{STATE}")
        return {r["stream"]: Watermark((r["seq"], r["id"]), tuple(r["pending"])) for r in rows}

    async def write(self, stream: str, batch: Batch, source: str) -> None:
        s = _q(self._schema)
        async with self._conn.transaction():
            for delete in batch.deletes:
                await self._conn.execute(f"DELETE FROM {s}.{_q(delete.table)} WHERE {_q(delete.column)} = ANY($1)",
                                         delete.values)
            for name, rows in batch.rows.items():
                if rows:
                    await self._upsert(BY_NAME[name], rows)
            await self._conn.execute(
                f"INSERT INTO {s}.{STATE} (stream, seq, id, pending, source) VALUES ($1, $2, $3, $4, $5) "
                "ON CONFLICT (stream) DO UPDATE SET seq = EXCLUDED.seq, id = EXCLUDED.id, pending = EXCLUDED.pending, "
                "source = EXCLUDED.source, at = now()",
                stream, *batch.mark.cursor, list(batch.mark.pending), source)

    async def _upsert(self, table: ExportTable, rows: list[dict[str, Any]]) -> None:
        target, stage = f"{_q(self._schema)}.{_q(table.name)}", f"stage_{table.name}"
        columns = ", ".join(map(_q, table.names))
        await self._conn.execute(f"CREATE TEMP TABLE {stage} (LIKE {target}) ON COMMIT DROP")
        await self._conn.copy_records_to_table(stage, records=[_encode(table, r) for r in rows],
                                               columns=table.names)
        updates = ", ".join(f"{_q(c)} = EXCLUDED.{_q(c)}" for c in table.names if c not in table.key)
        await self._conn.execute(f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {stage} "
                                 f"ON CONFLICT ({', '.join(map(_q, table.key))}) DO UPDATE SET {updates}")
