"""The single add/update benchmark: ``POST /api/v1/contact`` on PostgreSQL, what one call costs.

1. A fresh PostgreSQL database of this run (``bench_contacts_<pid>``, at the head: ``serve`` migrates it)
   with the real ``stitcher serve`` (worker off) and a private redis-server: ``ROUNDS`` times, ``CONTACTS``
   new contacts (external ID, email, phone) with ``CONCURRENCY`` in flight, then the same contacts updated
   (a name, a language, a field). Per phase: requests/s and the CPU each process used per call (the
   service, its PostgreSQL backends), the best round of each.
2. Another database (``bench_contacts_st_<pid>``) migrated only to ``BENCH_CONTACTS_REVISION`` (default the
   head, so the cost before and after a migration can be compared), on one connection: the API's update
   statement alone (the shape of ``contact_rows._pg_update``), ``STATEMENT_CONTACTS`` new contacts each
   updated in ``STATEMENT_ROUNDS`` rounds, one transaction a call; the PostgreSQL backend's CPU per call
   (``/proc/PID/schedstat``, median, so a call slowed by other load on the machine does not count) and how
   many of the contacts' updates were HOT (``pg_stat_user_tables``: no index entry written).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bench.common import Children, say
from bench.stitch import Bench, drop_database, own_database, served, start_redis

CONTACTS, CONCURRENCY, ROUNDS, SECONDS = 500, 16, 3, 10.0
STATEMENT_CONTACTS, STATEMENT_ROUNDS = 2000, 3
_NEW = """
WITH c AS (INSERT INTO contacts (external_customer_id, first_name, created_at, updated_at)
           VALUES ($1, 'Ann', $2, $2) RETURNING id),
i AS (INSERT INTO identifiers (contact_id, kind, value, device, created_at)
      SELECT c.id, u.k, u.v, u.d, $2 FROM c, unnest($3::text[], $4::text[], $5::text[]) AS u(k, v, d)
      ON CONFLICT (contact_id, kind, value) DO NOTHING)
SELECT id FROM c"""
_UPDATE = """
WITH old AS (SELECT id, external_customer_id, deleted_at, merged_into_id FROM contacts WHERE id = $1 FOR UPDATE),
u AS (UPDATE contacts SET first_name = $2, language_code = $3, updated_at = $4 FROM old WHERE contacts.id = old.id),
i AS (INSERT INTO identifiers (contact_id, kind, value, device, created_at)
      SELECT old.id, n.k, n.v, n.d, $4 FROM old, unnest($5::text[], $6::text[], $7::text[]) AS n(k, v, d)
      ON CONFLICT (contact_id, kind, value) DO NOTHING)
SELECT id FROM old"""


def _head(backend: str, tmp: Path) -> tuple[str, str | None]:
    return own_database(backend, tmp, "contacts")


def _prepare(backend: str, tmp: Path) -> tuple[str, str | None]:
    """A database migrated to ``BENCH_CONTACTS_REVISION`` (default the head)."""
    revision = os.environ.get("BENCH_CONTACTS_REVISION", "head")
    if revision == "head":
        return own_database(backend, tmp, "contacts_st")
    from stitcher.store import migrate

    saved = migrate.upgrade
    migrate.upgrade = lambda settings, rev="head": saved(settings, revision)  # type: ignore[assignment]
    try:
        return own_database(backend, tmp, "contacts_st")
    finally:
        migrate.upgrade = saved


def _bodies(tag: str, update: bool) -> list[bytes]:
    import orjson

    return [orjson.dumps({
        "externalCustomerId": f"cb-{tag}-{i}", "firstName": "Olena" if update else "Ann", "lastName": f"T{i}",
        "languageCode": "uk" if update else "en",
        "channels": [{"type": "email", "value": f"cb{i}.{tag}@example.com"},
                     {"type": "sms", "value": f"+38067{3000000 + i:07d}"}],
        **({"fields": [{"id": 1, "value": "vip"}]} if update else {})}) for i in range(CONTACTS)]


async def measure(url: str, db_url: str, redis_url: str, service_pid: int) -> dict[str, Any]:
    b = Bench(url, db_url, redis_url, {"service": service_pid})
    out: dict[str, Any] = {"new": [], "existing": []}
    try:
        await b.add_update(_bodies("warm", update=False)[:CONCURRENCY * 4], SECONDS)  # connections, caches
        for _ in range(ROUNDS):
            tag = uuid.uuid4().hex[:8]
            out["new"].append(await b.add_update(_bodies(tag, update=False), SECONDS))
            out["existing"].append(await b.add_update(_bodies(tag, update=True), SECONDS))
    finally:
        await b.close()
    result: dict[str, Any] = {}
    for phase, rounds in out.items():
        best = min(rounds, key=lambda r: r["cpu_ms_per_request"].get("service", 1e9))
        result[phase] = {"rps": best["rps"], "cpu_ms_per_request": best["cpu_ms_per_request"],
                         "statuses": best["statuses"], "errors": best["errors"],
                         "service_cpu_ms_rounds": [r["cpu_ms_per_request"].get("service") for r in rounds]}
    return result


def _backend_us(pid: int) -> float:
    with open(f"/proc/{pid}/schedstat") as f:  # PostgreSQL runs on this machine (bench.stitch checks)
        return int(f.read().split()[0]) / 1e3


async def statement_cost(db_url: str) -> dict[str, Any]:
    """The update statement alone on one connection: backend CPU µs per call (median) and the HOT share."""
    import statistics

    import asyncpg

    from stitcher.exports.postgres import dsn

    conn = await asyncpg.connect(dsn(db_url))
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    channels = [(["email", "sms"], [f"st{i}@example.com", f"+38063{i:07d}"], [None, None])
                for i in range(STATEMENT_CONTACTS)]
    (before_upd, before_hot) = await _hot_conn(conn)
    ids, new = [], []
    for i, (kinds, values, devices) in enumerate(channels):
        started = _backend_us(pid)
        async with conn.transaction():
            ids.append(await conn.fetchval(_NEW, f"st-{i}", 1000, kinds, values, devices))
        new.append(_backend_us(pid) - started)
    rounds = []
    for r in range(STATEMENT_ROUNDS):
        calls = []
        for cid, (kinds, values, devices) in zip(ids, channels, strict=True):
            started = _backend_us(pid)
            async with conn.transaction():
                await conn.fetchval(_UPDATE, cid, f"Olena{r}", "uk", 2000 + r, kinds, values, devices)
            calls.append(_backend_us(pid) - started)
        rounds.append(round(statistics.median(calls), 1))
    await conn.close()  # its statistics are sent when it ends
    await asyncio.sleep(1.5)
    conn = await asyncpg.connect(dsn(db_url))
    try:
        upd, hot = await _hot_conn(conn)
    finally:
        await conn.close()
    return {"new_us_median": round(statistics.median(new), 1), "update_us_median_rounds": rounds,
            "contacts_updates": upd - before_upd, "contacts_hot_updates": hot - before_hot}


async def _hot_conn(conn: Any) -> tuple[int, int]:
    row = await conn.fetchrow("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'contacts'")
    return int(row[0]), int(row[1])


def main() -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="stitcher-bench-contacts-"))
    revision = os.environ.get("BENCH_CONTACTS_REVISION", "head")
    try:
        with Children() as children:
            _, redis_url = start_redis(children, tmp)
            with served(children, tmp, "postgresql", redis_url, _head) as (service, url, db_url):
                result = asyncio.run(measure(url, db_url, redis_url, service.pid))
            # a database of its own at the revision asked for (``stitcher serve`` migrates its own to the head)
            st_url, st_name = _prepare("postgresql", tmp)
            try:
                result["statement"] = asyncio.run(statement_cost(st_url))
            finally:
                drop_database(st_url, st_name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"   PostgreSQL: POST /api/v1/contact, {CONCURRENCY} in flight, "
        f"{CONTACTS} contacts, best of {ROUNDS}")
    for phase in ("new", "existing"):
        x = result[phase]
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in x["cpu_ms_per_request"].items() if k != "bench")
        say(f"   {phase:<9} {x['rps']:>7.1f} req/s  CPU ms/call: {cpu}  (service per round: "
            f"{x['service_cpu_ms_rounds']})")
    st = result["statement"]
    say(f"   the update statement alone at migration {revision}, one connection: "
        f"{st['update_us_median_rounds']} µs of PostgreSQL CPU a call (median per round), a new contact "
        f"{st['new_us_median']} µs; contacts updates "
        f"{st['contacts_updates']}, HOT {st['contacts_hot_updates']}")
    return {"revision": revision, **result}


if __name__ == "__main__":
    main()
