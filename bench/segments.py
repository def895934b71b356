"""The dynamic-group benchmark: "every contact without an external ID" over 100,000 contacts.

On PostgreSQL (a database of this run, ``bench_segments_<pid>``, created, migrated and dropped again) and
SQLite (a temp file): ``CONTACTS`` contacts are seeded in one transaction (COPY on PostgreSQL, one
executemany on SQLite) — a third with an external ID, 1 in 20 deleted, 1 in 50 merged, an email each — then
``ANALYZE`` (and on PostgreSQL ``VACUUM``, which autovacuum does in service: it is what lets a count be an
index-only scan). The group ``externalCustomerId not_set`` is created through ``GroupService`` and its
members read as the API reads them, ``RUNS`` times after a warm-up: the ``TotalCount`` query, the first page
(``maxrows=500``) and the whole ``GET /api/v1/group/{id}/contacts`` work (count + page + channels);
p50 and max in ms; then the same with migration 0008's partial indexes dropped (the "before"). The
PostgreSQL plans (``EXPLAIN ANALYZE``) of the count and the page are printed and saved.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.common import say
from bench.stitch import PG_BASE_URL, _pg_admin

CONTACTS = 100_000
RUNS = 20
MAX_ROWS = 500
SEGMENT = {"name": "No external ID", "type": "dynamic",
           "conditions": [{"field": "externalCustomerId", "op": "not_set"}]}


def _rows(now: int) -> list[tuple[Any, ...]]:
    """(id, external id, first name, created, updated, deleted_at, merged_into_id) of every contact."""
    return [(i, f"E{i}" if i % 3 == 0 else None, f"P{i}", now, now, now if i % 20 == 1 else None,
             1 if i % 50 == 2 else None) for i in range(1, CONTACTS + 1)]


COLUMNS = ["id", "external_customer_id", "first_name", "created_at", "updated_at", "deleted_at", "merged_into_id"]


async def _seed_pg(url: str) -> float:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        started = time.perf_counter()
        now = int(time.time() * 1000)
        async with conn.transaction():
            await conn.copy_records_to_table("contacts", columns=COLUMNS, records=_rows(now))
            await conn.execute("SELECT setval('contacts_id_seq', $1)", CONTACTS)
            await conn.copy_records_to_table("identifiers", columns=["contact_id", "kind", "value", "created_at"],
                                             records=[(i, "email", f"c{i}@example.com", now)
                                                      for i in range(1, CONTACTS + 1)])
        await conn.execute("VACUUM ANALYZE contacts")
        await conn.execute("VACUUM ANALYZE identifiers")
        return time.perf_counter() - started
    finally:
        await conn.close()


def _seed_sqlite(path: Path) -> float:
    started = time.perf_counter()
    now = int(time.time() * 1000)
    with sqlite3.connect(path) as conn:
        conn.executemany(f"INSERT INTO contacts ({', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?)", _rows(now))
        conn.executemany("INSERT INTO identifiers (contact_id, kind, value, created_at) VALUES (?, ?, ?, ?)",
                         [(i, "email", f"c{i}@example.com", now) for i in range(1, CONTACTS + 1)])
        conn.execute("ANALYZE")
    return time.perf_counter() - started


async def _timed(work: Callable[[], Awaitable[Any]]) -> dict[str, float]:
    await work()  # warm-up
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        await work()
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2)}


async def _measure(url: str) -> dict[str, Any]:
    from stitcher.domain.identifiers import Normaliser
    from stitcher.domain.segments import parse_group
    from stitcher.groups.service import GroupService
    from stitcher.store import segments
    from stitcher.store.db import Database
    from stitcher.store.repo import now_ms

    db = Database(url)
    try:
        service = GroupService(db, Normaliser())
        group_id = await service.create(SEGMENT)
        spec = parse_group(SEGMENT)
        members = segments.dynamic_members(spec.conditions, spec.match, db.dialect, now_ms())

        async def count() -> int:
            async with db.reader() as s:
                return await segments.count(s, members)

        async def first_page() -> list[Any]:
            async with db.reader() as s:
                return await segments.page(s, members, 1, MAX_ROWS)

        total, page = await count(), await first_page()
        expected = sum(1 for i in range(1, CONTACTS + 1) if i % 3 and i % 20 != 1 and i % 50 != 2)
        assert total == expected and len(page) == MAX_ROWS, (total, expected, len(page))
        out: dict[str, Any] = {"total_count": total, "count": await _timed(count),
                               "first_page": await _timed(first_page),
                               "api_call": await _timed(lambda: service.contacts(group_id, 1, MAX_ROWS))}
        if db.dialect == "postgresql":
            out["plans"] = {name: await _explain(db, query) for name, query in (
                ("count", segments.count_query(members)),
                ("first_page", segments.page_query(members, 1, MAX_ROWS)))}
        return out
    finally:
        await db.close()


async def _without_indexes(url: str) -> dict[str, Any]:
    """The same measurements with migration 0008's partial indexes dropped: the "before"."""
    from stitcher.store.db import Database

    db = Database(url)
    try:
        async with db.transaction() as s:
            for index in ("ix_contacts_live_no_external_id", "ix_contacts_live"):
                await s.execute(text(f"DROP INDEX {index}"))
            await s.execute(text("ANALYZE contacts" if db.dialect == "postgresql" else "ANALYZE"))
            await s.execute(text("DELETE FROM groups"))
    finally:
        await db.close()
    return await _measure(url)


async def _explain(db: Any, query: Any) -> list[str]:
    async with db.reader() as s:
        rows = await s.execute(text("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + str(
            query.compile(dialect=db.engine.dialect, compile_kwargs={"literal_binds": True}))))
        return [line for (line,) in rows]


def _report(backend: str, seeded_s: float, r: dict[str, Any]) -> None:
    say(f"   {backend}: seeded {CONTACTS:,} contacts in {seeded_s:.1f} s; TotalCount {r['total_count']:,}")
    for key, label in (("count", "TotalCount query"), ("first_page", f"first page ({MAX_ROWS})"),
                       ("api_call", "GET …/contacts work (count + page + channels)")):
        say(f"      {label}: p50 {r[key]['p50_ms']} ms, max {r[key]['max_ms']} ms")
    for name, plan in r.get("plans", {}).items():
        say(f"      plan of the {name}:")
        for line in plan:
            say(f"         {line}")


def main() -> dict[str, Any]:
    from stitcher.store.migrate import upgrade
    from tracker.settings import Settings

    results: dict[str, Any] = {"contacts": CONTACTS, "runs": RUNS}
    name = f"bench_segments_{os.getpid()}"
    url = f"{PG_BASE_URL}/{name}"
    _pg_admin(url, [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'])
    try:
        upgrade(Settings(database_url=url))
        seeded = asyncio.run(_seed_pg(url))
        results["postgresql"] = asyncio.run(_measure(url))
        _report("postgresql", seeded, results["postgresql"])
        results["postgresql_without_indexes"] = asyncio.run(_without_indexes(url))
        _report("postgresql without the partial indexes (before)", seeded, results["postgresql_without_indexes"])
    finally:
        _pg_admin(url, [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'])
    tmp = Path(tempfile.mkdtemp(prefix="stitcher-bench-segments-"))
    try:
        sqlite_url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
        upgrade(Settings(database_url=sqlite_url))
        seeded = _seed_sqlite(tmp / "bench.db")
        results["sqlite"] = asyncio.run(_measure(sqlite_url))
        _report("sqlite", seeded, results["sqlite"])
        results["sqlite_without_indexes"] = asyncio.run(_without_indexes(sqlite_url))
        _report("sqlite without the partial indexes (before)", seeded, results["sqlite_without_indexes"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results
