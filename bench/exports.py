"""The export benchmark: ``stitcher export postgres`` of 100,000 contacts and their events, rows/s.

Source and target are databases of this run on the machine's PostgreSQL, ``bench_exports_<pid>_src``
(created, migrated, seeded by COPY: ``CONTACTS`` contacts with an email each, ``EVENTS_PER`` timeline
events each) and ``bench_exports_<pid>_dst``; both are dropped at the end, whatever happens. Timed, in this
process (the export's own code, not a subprocess), batches of the default size:

1. the first export (every row): rows/s;
   with the export's CPU seconds (this process; the rest of the wall time is the databases and waiting);
2. a second export with nothing changed (what an idle cron run costs);
3. after ``CHANGED`` contacts are updated and as many events added: the incremental export.

Then the same seed from a SQLite source (a file of this run, seeded by multi-row inserts) into a fresh schema.
Last, what the change-sequence triggers cost a write: ``CONTACTS`` more timeline rows written (PostgreSQL:
one COPY; SQLite: multi-row inserts) with the triggers, then as many without them (disabled / dropped
for the measurement), best of ``TRIGGER_ROUNDS`` each.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import say
from bench.stitch import PG_BASE_URL, _pg_admin

CONTACTS = 100_000
EVENTS_PER = 3
CHANGED = 1000
TRIGGER_ROUNDS = 3
_T0 = 1_796_000_000_000


def _contacts() -> list[tuple[Any, ...]]:
    return [(i, f"C{i}" if i % 3 else None, f"Name{i}", _T0 + i, _T0 + i) for i in range(1, CONTACTS + 1)]


def _identifiers() -> list[tuple[Any, ...]]:
    return [(i, "email", f"p{i}@example.com", _T0) for i in range(1, CONTACTS + 1)]


def _events(first: int = 0) -> list[tuple[Any, ...]]:
    return [(i, f"e{first}-{i}-{k}", "web", "page_view", _T0 + k, _T0 + k, f"v{i}", '{"url": "https://x.example/"}')
            for i in range(1, CONTACTS + 1) for k in range(EVENTS_PER)]


_CONTACT_COLS = ["id", "external_customer_id", "first_name", "created_at", "updated_at"]
_IDENT_COLS = ["contact_id", "kind", "value", "created_at"]
_EVENT_COLS = ["contact_id", "event_id", "source", "type", "occurred_at", "received_at", "visitor_id", "data"]


async def _seed_pg(url: str) -> None:
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        await conn.copy_records_to_table("contacts", records=_contacts(), columns=_CONTACT_COLS)
        await conn.execute("SELECT setval('contacts_id_seq', $1)", CONTACTS)
        await conn.copy_records_to_table("identifiers", records=_identifiers(), columns=_IDENT_COLS)
        await conn.copy_records_to_table("timeline", records=_events(), columns=_EVENT_COLS)
    finally:
        await conn.close()


def _insert_sqlite(db: Any, table: str, cols: list[str], rows: list[tuple[Any, ...]]) -> None:
    per = 999 // len(cols)  # bound parameters of one multi-row insert
    one = "(" + ", ".join("?" * len(cols)) + ")"
    for k in range(0, len(rows), per):
        chunk = rows[k:k + per]
        db.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES {', '.join([one] * len(chunk))}",
                   [v for row in chunk for v in row])


def _seed_sqlite(path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    for table, cols, rows in (("contacts", _CONTACT_COLS, _contacts()), ("identifiers", _IDENT_COLS, _identifiers()),
                              ("timeline", _EVENT_COLS, _events())):
        _insert_sqlite(db, table, cols, rows)
    db.commit()
    db.close()


def _new_events(label: str) -> list[tuple[Any, ...]]:
    return [(i, f"{label}-{i}", "web", "page_view", _T0, _T0, None, None) for i in range(1, CONTACTS + 1)]


async def _trigger_cost_pg(url: str) -> dict[str, float]:
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    best: dict[str, float] = {"with": float("inf"), "without": float("inf")}
    try:
        for r in range(TRIGGER_ROUNDS):
            for label in ("with", "without"):
                rows = _new_events(f"{label}{r}")
                if label == "without":
                    await conn.execute("ALTER TABLE timeline DISABLE TRIGGER timeline_export_stamp")
                started = time.perf_counter()
                await conn.copy_records_to_table("timeline", records=rows, columns=_EVENT_COLS)
                best[label] = min(best[label], time.perf_counter() - started)
                await conn.execute("ALTER TABLE timeline ENABLE TRIGGER timeline_export_stamp")
    finally:
        await conn.close()
    return best


def _trigger_cost_sqlite(path: Path) -> dict[str, float]:
    import sqlite3

    db = sqlite3.connect(path)
    best: dict[str, float] = {"with": float("inf"), "without": float("inf")}
    trigger = db.execute("SELECT sql FROM sqlite_master WHERE name = 'timeline_export_insert'").fetchone()[0]
    for r in range(TRIGGER_ROUNDS):
        for label in ("with", "without"):
            if label == "without":
                db.execute("DROP TRIGGER timeline_export_insert")
            started = time.perf_counter()
            _insert_sqlite(db, "timeline", _EVENT_COLS, _new_events(f"{label}{r}"))
            db.commit()
            best[label] = min(best[label], time.perf_counter() - started)
            if label == "without":
                db.execute(trigger)
    db.close()
    return best


def _cost(backend: str, best: dict[str, float]) -> dict[str, Any]:
    out = {f"{k}_rows_per_s": round(CONTACTS / v) for k, v in best.items()}
    out["extra_us_per_row"] = round((best["with"] - best["without"]) / CONTACTS * 1e6, 1)
    say(f"      triggers ({backend}): {out['with_rows_per_s']:,} timeline rows/s with, {out['without_rows_per_s']:,} "
        f"without: {out['extra_us_per_row']} µs a row")
    return out


async def _change(url: str) -> None:
    """``CHANGED`` contacts renamed and as many new events, through SQL (the triggers stamp them)."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE contacts SET first_name = 'Changed', updated_at = updated_at + 1 "
                                "WHERE id <= :n"), {"n": CHANGED})
        await conn.execute(text("INSERT INTO timeline (contact_id, event_id, source, type, occurred_at, received_at) "
                                "VALUES (:c, :e, 'api', 'changed', 0, 0)"),
                           [{"c": i, "e": f"changed-{i}"} for i in range(1, CHANGED + 1)])
    await engine.dispose()


async def _timed(source: str, target: str, schema: str) -> dict[str, Any]:
    from stitcher.exports.command import run

    err = io.StringIO()
    started, cpu = time.perf_counter(), time.process_time()
    code = await run(source, "postgres", url=target, schema=schema, err=err)
    took, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert code == 0, err.getvalue()
    rows = sum(int(line.split()[1]) for line in err.getvalue().splitlines() if line)
    return {"rows": rows, "elapsed_s": round(took, 2), "rows_per_s": round(rows / took), "export_cpu_s": round(cpu, 2)}


def _runs(source: str, target: str, schema: str) -> dict[str, Any]:
    out = {"first": asyncio.run(_timed(source, target, schema)),
           "unchanged": asyncio.run(_timed(source, target, schema))}
    asyncio.run(_change(source))
    out["incremental"] = asyncio.run(_timed(source, target, schema))
    for label, figures in out.items():
        say(f"      {label}: {figures['rows']:,} rows in {figures['elapsed_s']} s = {figures['rows_per_s']:,} rows/s "
            f"(the export's CPU {figures['export_cpu_s']} s)")
    return out


def main() -> dict[str, Any]:
    from stitcher.store.migrate import upgrade
    from tracker.settings import Settings

    base = f"bench_exports_{os.getpid()}"
    source, target = f"{PG_BASE_URL}/{base}_src", f"{PG_BASE_URL}/{base}_dst"
    tmp = Path(tempfile.mkdtemp(prefix="stitcher-bench-exports-"))
    names = (f"{base}_src", f"{base}_dst")
    results: dict[str, Any] = {"contacts": CONTACTS, "events": CONTACTS * EVENTS_PER, "changed": CHANGED}
    _pg_admin(source, [s for n in names for s in (f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)',
                                                  f'CREATE DATABASE "{n}"')])
    try:
        target_url = target.replace("+asyncpg", "")
        upgrade(Settings(database_url=source))
        say(f"   seeding {CONTACTS:,} contacts and {CONTACTS * EVENTS_PER:,} events (PostgreSQL, COPY) ...")
        asyncio.run(_seed_pg(source))
        say("   postgresql source:")
        results["postgresql"] = _runs(source, target_url, "from_postgresql")
        sqlite = f"sqlite+aiosqlite:///{tmp / 'source.db'}"
        upgrade(Settings(database_url=sqlite))
        say("   seeding the same into SQLite (multi-row inserts) ...")
        _seed_sqlite(tmp / "source.db")
        say("   sqlite source:")
        results["sqlite"] = _runs(sqlite, target_url, "from_sqlite")
        results["trigger_cost"] = {"postgresql": _cost("postgresql", asyncio.run(_trigger_cost_pg(source))),
                                   "sqlite": _cost("sqlite", _trigger_cost_sqlite(tmp / "source.db"))}
    finally:
        _pg_admin(source, [f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in names])
        shutil.rmtree(tmp, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
