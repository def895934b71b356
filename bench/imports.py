"""The bulk-import benchmark: 100,000 contacts through ``POST /api/v1/contacts`` against a raw bulk insert.

On PostgreSQL (a database of this run, ``bench_imports_<pid>``, created, migrated and dropped again) with a
private redis-server and a real ``stitcher serve`` (worker off, JSON logs to a file):

1. Seed ``SEEDED`` existing contacts with an email each (a third of them with an external ID) by COPY.
2. Import ``ROWS`` rows in ``REQUESTS`` requests, ``dedupeOn=email``: half the rows name a seeded email
   (a third of those with the seeded contact's external ID, a third with a new one, so a seeded
   unidentified contact is given it), half are new people (a quarter of them with an external ID). Timed
   from the first request to the last ``FINISHED`` status (the oldest unfinished import polled every
   50 ms): contacts/s, with the service's CPU.
3. Raw: the same number of rows as new contacts and their email identifiers, COPY into the same tables (ids
   reserved from the sequence), in one transaction: the floor of "write 100,000 contacts". Ratio = import
   rate / raw rate. Targets: >= 20,000 contacts/s and >= 0.25 of raw.
4. A cProfile (CPU time, in this process) of one 3,000-row import applied by the service's own runner, by
   function: where the time goes.

Everything runs on 127.0.0.1 and is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import os
import pstats
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.common import Children, cpu_seconds
from bench.stitch import API_KEY, PG_BASE_URL, _pg_admin, start_service
from bench.tracker import start_redis

ROWS = 100_000
REQUESTS = 34
SEEDED = 50_000
PROFILE_ROWS = 3000
TARGET_RATE = 20_000
TARGET_RATIO = 0.25
TIMEOUT_S = 600


def _say(text: str = "") -> None:
    print(text, flush=True)


def rows() -> list[dict[str, Any]]:
    """The import's rows: even rows match a seeded contact's email, odd rows are new people."""
    out: list[dict[str, Any]] = []
    for i in range(ROWS):
        if i % 2 == 0:
            n = i // 2  # seeded contact n: ext ID S<n> when n % 3 == 0
            row: dict[str, Any] = {"channels": [{"type": "email", "value": f"seed{n}@example.com"}],
                                   "firstName": f"Seed{n}"}
            if n % 3 == 0:
                row["externalCustomerId"] = f"S{n}"
            elif n % 3 == 1:
                row["externalCustomerId"] = f"N{n}"
        else:
            row = {"channels": [{"type": "email", "value": f"new{i}@example.com"}], "firstName": f"New{i}",
                   "lastName": "Imported"}
            if i % 4 == 1:
                row["externalCustomerId"] = f"X{i}"
        out.append(row)
    return out


async def _copy(url: str, contacts: list[tuple[Any, ...]], emails: list[str]) -> float:
    """COPY contacts (given as (external id, first name)) and one email identifier each; seconds taken."""
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        started = time.perf_counter()
        async with conn.transaction():
            first = await conn.fetchval("SELECT nextval('contacts_id_seq')")
            await conn.execute("SELECT setval('contacts_id_seq', $1)", first + len(contacts))
            now = int(time.time() * 1000)
            await conn.copy_records_to_table(
                "contacts", columns=["id", "external_customer_id", "first_name", "created_at", "updated_at"],
                records=[(first + k, ext, name, now, now) for k, (ext, name) in enumerate(contacts)])
            await conn.copy_records_to_table(
                "identifiers", columns=["contact_id", "kind", "value", "created_at"],
                records=[(first + k, "email", e, now) for k, e in enumerate(emails)])
        return time.perf_counter() - started
    finally:
        await conn.close()


async def _import(base_url: str, bodies: list[bytes], service_pid: int) -> dict[str, Any]:
    headers = {"Content-Type": "application/json",
               "Authorization": aiohttp.BasicAuth("bench", API_KEY).encode()}
    cpu0 = cpu_seconds(service_pid)
    started = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        ids = []
        for body in bodies:
            async with http.post(f"{base_url}/api/v1/contacts", data=body, headers=headers) as r:
                answer = await r.json()
                assert r.status == 200, answer
                ids.append(answer["asyncSessionId"])
        accepted = time.perf_counter() - started
        reports: dict[str, Any] = {}
        # imports run in the order they were accepted: poll the oldest unfinished one only (a status carries
        # its import's whole mapping, so polling all 34 at once would be a load of its own)
        for sid in ids:
            while sid not in reports:
                if time.perf_counter() - started > TIMEOUT_S:
                    raise RuntimeError(f"imports not finished after {TIMEOUT_S} s")
                async with http.get(f"{base_url}/api/v1/importstatus/{sid}", headers=headers) as r:
                    status = await r.json()
                if status["status"] in ("FINISHED", "ERROR"):
                    reports[sid] = status
                else:
                    await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    totals = {k: sum(r[k] for r in reports.values()) for k in ("created", "updated", "restored", "skipped")}
    totals["failed"] = sum(len(r["failedContacts"]) for r in reports.values())
    totals["errors"] = sum(r["status"] == "ERROR" for r in reports.values())
    return {"elapsed_s": round(elapsed, 2), "accepted_s": round(accepted, 2),
            "contacts_per_s": round(ROWS / elapsed), "service_cpu_s": round(cpu_seconds(service_pid) - cpu0, 2),
            **totals}


async def _profile(url: str, body: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """cProfile of one import applied in this process by the service's runner: top functions by own time."""
    from stitcher.app import normaliser
    from stitcher.imports.request import parse_import
    from stitcher.imports.runner import ImportRunner
    from stitcher.store.db import Database
    from tracker.settings import Settings

    db = Database(url)
    runner = ImportRunner(db, normaliser(Settings()))
    request = parse_import({"contacts": body, "dedupeOn": "email"})
    profiler = cProfile.Profile()
    try:
        profiler.enable()
        await runner.submit(request, None)
        await runner.wait()
        profiler.disable()
    finally:
        await db.close()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:15]  # type: ignore[attr-defined]
    return [{"function": f"{Path(f).name}:{line}({name})", "own_s": round(v[2], 3),
             "share": round(v[2] / total, 3)} for (f, line, name), v in top]


def main() -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="stitcher-bench-imports-"))
    name = f"bench_imports_{os.getpid()}"
    url = f"{PG_BASE_URL}/{name}"
    results: dict[str, Any] = {"rows": ROWS, "requests": REQUESTS, "seeded": SEEDED,
                               "targets": {"contacts_per_s": TARGET_RATE, "ratio": TARGET_RATIO}}
    from stitcher.store.migrate import upgrade
    from tracker.settings import Settings

    _pg_admin(url, [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'])
    try:
        upgrade(Settings(database_url=url))
        seeded = [(f"S{n}" if n % 3 == 0 else None, f"Seed{n}") for n in range(SEEDED)]
        asyncio.run(_copy(url, seeded, [f"seed{n}@example.com" for n in range(SEEDED)]))
        all_rows = rows()
        per = -(-ROWS // REQUESTS)
        bodies = [orjson.dumps({"contacts": all_rows[k:k + per], "dedupeOn": "email"})
                  for k in range(0, ROWS, per)]
        with Children() as children:
            _say("   starting redis-server and stitcher serve (PostgreSQL) ...")
            _, redis_url = start_redis(children, tmp)
            service, base_url = start_service(children, tmp, "postgresql", url, redis_url)
            _say(f"   importing {ROWS:,} rows in {len(bodies)} requests ...")
            results["import"] = asyncio.run(_import(base_url, bodies, service.pid))
        raw_rows = [(f"R{i}" if i % 4 == 1 else None, f"Raw{i}") for i in range(ROWS)]
        raw_s = asyncio.run(_copy(url, raw_rows, [f"raw{i}@example.com" for i in range(ROWS)]))
        results["raw"] = {"elapsed_s": round(raw_s, 2), "contacts_per_s": round(ROWS / raw_s)}
        results["ratio"] = round(results["import"]["contacts_per_s"] / results["raw"]["contacts_per_s"], 3)
        profile_rows = [{"channels": [{"type": "email", "value": f"prof{i}@example.com"}], "firstName": "P",
                         **({"externalCustomerId": f"P{i}"} if i % 2 else {})} for i in range(PROFILE_ROWS)]
        results["profile"] = asyncio.run(_profile(url, profile_rows))
    finally:
        _pg_admin(url, [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'])
        shutil.rmtree(tmp, ignore_errors=True)
    imp = results["import"]
    results["pass"] = imp["contacts_per_s"] >= TARGET_RATE and results["ratio"] >= TARGET_RATIO and not imp["errors"]
    _say(f"   import: {imp['contacts_per_s']:,} contacts/s ({imp['elapsed_s']} s; answered in {imp['accepted_s']} s; "
         f"service CPU {imp['service_cpu_s']} s); created {imp['created']:,}, updated {imp['updated']:,}, "
         f"failed {imp['failed']}, errors {imp['errors']}")
    _say(f"   raw COPY: {results['raw']['contacts_per_s']:,} contacts/s ({results['raw']['elapsed_s']} s)")
    _say(f"   ratio {results['ratio']} (target >= {TARGET_RATIO}); target {TARGET_RATE:,}/s: "
         f"{'PASS' if results['pass'] else 'FAIL'}")
    _say(f"   profile of one {PROFILE_ROWS:,}-row import in-process (own time):")
    for p in results["profile"]:
        _say(f"     {p['share']:>6.1%}  {p['own_s']:>6.3f} s  {p['function']}")
    return results
