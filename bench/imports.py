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
4. One 3,000-row import of the same mix applied in this process by the service's own runner, alone: its
   CPU per row split into parse / decide / SQL, and PostgreSQL time per chunk (``_Phases``).

Everything runs on 127.0.0.1 and is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.common import Children, cpu_seconds, say
from bench.stitch import API_KEY, PG_BASE_URL, _pg_admin, start_service
from bench.tracker import start_redis

ROWS = 100_000
REQUESTS = 34
SEEDED = 50_000
PROFILE_ROWS = 3000
TARGET_RATE = 20_000
TARGET_RATIO = 0.25
TIMEOUT_S = 600


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


def _postgres_cpu(database: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend serving ``database`` (by pid, from /proc; the server runs
    on this machine): a backend's CPU is the import's too."""
    out: dict[int, float] = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if f" {database} ".encode() in cmdline.read_bytes():
                out[int(cmdline.parent.name)] = cpu_seconds(int(cmdline.parent.name))
        except OSError:
            continue
    return out


def _descendants(pid: int) -> list[int]:
    """The processes started by ``pid`` and theirs (the import's parser process), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(parents.get(child, []))
    return out


async def _import(base_url: str, bodies: list[bytes], service_pid: int, database: str) -> dict[str, Any]:
    headers = {"Content-Type": "application/json",
               "Authorization": aiohttp.BasicAuth("bench", API_KEY).encode()}
    cpu0, pg0 = cpu_seconds(service_pid), _postgres_cpu(database)
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
        # imports run in the order they were accepted (two at a time): poll the newest until it ends, then
        # read each other once (a status carries its import's whole mapping, so a status polled while the
        # imports run costs the service a share of the CPU the imports need)
        for sid in reversed(ids):
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
    # the parser process (started by the first import) is still running: its CPU is the import's too
    parser_cpu = sum(cpu_seconds(child) for child in _descendants(service_pid))
    pg_cpu = sum(cpu - pg0.get(pid, 0.0) for pid, cpu in _postgres_cpu(database).items())
    totals = {k: sum(r[k] for r in reports.values()) for k in ("created", "updated", "restored", "skipped")}
    totals["failed"] = sum(len(r["failedContacts"]) for r in reports.values())
    totals["errors"] = sum(r["status"] == "ERROR" for r in reports.values())
    return {"elapsed_s": round(elapsed, 2), "accepted_s": round(accepted, 2),
            "contacts_per_s": round(ROWS / elapsed), "service_cpu_s": round(cpu_seconds(service_pid) - cpu0, 2),
            "parser_cpu_s": round(parser_cpu, 2), "postgres_cpu_s": round(pg_cpu, 2),
            "cpu_us_per_row": {"service": round((cpu_seconds(service_pid) - cpu0) / ROWS * 1e6),
                               "parser": round(parser_cpu / ROWS * 1e6), "postgres": round(pg_cpu / ROWS * 1e6)},
            **totals}


class _Phases:
    """CPU (process time) and wall time spent in the import's phases, summed over chunks: the runner's
    functions wrapped in place. A chunk's SQL CPU is ``apply_chunk``'s CPU less its decisions; its
    PostgreSQL time is ``apply_chunk``'s wall time less its CPU (waits on the server, and on the CPU when the
    machine is loaded). cProfile cannot split this: SQLAlchemy's greenlet switches hide the returns of
    suspended frames, so a statement's cumulative time swallows whatever ran meanwhile."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {"parse": 0.0, "decide": 0.0, "chunk": 0.0, "parse_in_chunk": 0.0}
        self.in_chunk = 0
        self.chunk_wall = 0.0
        self.chunks = 0
        self._saved: list[tuple[Any, str, Any]] = []

    def restore(self) -> None:
        for module, name, original in reversed(self._saved):
            setattr(module, name, original)

    def wrap_sync(self, module: Any, name: str, phase: str) -> None:
        original = getattr(module, name)
        self._saved.append((module, name, original))

        def timed(*args: Any, **kwargs: Any) -> Any:
            c0 = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.cpu[phase] += time.process_time() - c0
                if phase == "parse" and self.in_chunk:  # the next chunk, parsed while this one waits on SQL
                    self.cpu["parse_in_chunk"] += time.process_time() - c0
        setattr(module, name, timed)

    def wrap_chunk(self, module: Any) -> None:
        original = module.apply_chunk
        self._saved.append((module, "apply_chunk", original))

        async def timed(*args: Any, **kwargs: Any) -> Any:
            c0, w0 = time.process_time(), time.perf_counter()
            self.in_chunk += 1
            try:
                return await original(*args, **kwargs)
            finally:
                self.in_chunk -= 1
                self.cpu["chunk"] += time.process_time() - c0
                self.chunk_wall += time.perf_counter() - w0
                self.chunks += 1
        module.apply_chunk = timed


async def _profile(url: str, body: list[dict[str, Any]]) -> dict[str, Any]:
    """One import applied in this process by the service's runner, alone (one import at a time, nothing else
    in this process): service CPU per row split into parse / decide / SQL, and PostgreSQL time per chunk."""
    from stitcher.app import normaliser
    from stitcher.imports import chunk
    from stitcher.imports import runner as runner_module
    from stitcher.imports.request import parse_import
    from stitcher.imports.runner import ImportRunner
    from stitcher.store.db import Database
    from tracker.settings import Settings

    phases = _Phases()
    phases.wrap_sync(runner_module, "parse_rows", "parse")
    phases.wrap_sync(chunk, "plan_import", "decide")
    phases.wrap_sync(chunk, "_targets", "decide")
    phases.wrap_chunk(runner_module)
    db = Database(url)
    try:
        runner = ImportRunner(db, normaliser(Settings()), concurrency=1)
        request = parse_import({"contacts": body, "dedupeOn": "email"})
        c0, w0 = time.process_time(), time.perf_counter()
        await runner.submit(request, None)
        await runner.wait()
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    finally:
        await db.close()
        phases.restore()
    n = len(body)
    chunk_cpu = phases.cpu["chunk"] - phases.cpu["parse_in_chunk"]  # the chunk's own work
    per_row = {"parse": phases.cpu["parse"], "decide": phases.cpu["decide"], "sql": chunk_cpu - phases.cpu["decide"],
               "other": cpu - phases.cpu["parse"] - chunk_cpu}
    return {"rows": n, "rows_per_s": round(n / wall), "cpu_us_per_row": round(cpu / n * 1e6),
            "split_us_per_row": {k: round(v / n * 1e6) for k, v in per_row.items()},
            "chunks": phases.chunks,
            "pg_ms_per_chunk": round((phases.chunk_wall - phases.cpu["chunk"]) / phases.chunks * 1000)}


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
            say("   starting redis-server and stitcher serve (PostgreSQL) ...")
            _, redis_url = start_redis(children, tmp)
            service, base_url = start_service(children, tmp, "postgresql", url, redis_url)
            say(f"   importing {ROWS:,} rows in {len(bodies)} requests ...")
            results["import"] = asyncio.run(_import(base_url, bodies, service.pid, name))
        raw_rows = [(f"R{i}" if i % 4 == 1 else None, f"Raw{i}") for i in range(ROWS)]
        raw_s = asyncio.run(_copy(url, raw_rows, [f"raw{i}@example.com" for i in range(ROWS)]))
        results["raw"] = {"elapsed_s": round(raw_s, 2), "contacts_per_s": round(ROWS / raw_s)}
        results["ratio"] = round(results["import"]["contacts_per_s"] / results["raw"]["contacts_per_s"], 3)
        # the benchmark's mix again, on the contacts the import made: half update, half create
        profile_rows = [{**row, "channels": [{"type": "email", "value": "p" + row["channels"][0]["value"]}]}
                        if k % 2 else row for k, row in enumerate(all_rows[:PROFILE_ROWS])]
        results["profile"] = asyncio.run(_profile(url, profile_rows))
    finally:
        _pg_admin(url, [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'])
        shutil.rmtree(tmp, ignore_errors=True)
    imp = results["import"]
    results["pass"] = imp["contacts_per_s"] >= TARGET_RATE and results["ratio"] >= TARGET_RATIO and not imp["errors"]
    per_row = ", ".join(f"{k} {v}" for k, v in imp["cpu_us_per_row"].items())
    say(f"   import: {imp['contacts_per_s']:,} contacts/s ({imp['elapsed_s']} s; answered in {imp['accepted_s']} s; "
         f"service CPU {imp['service_cpu_s']} s, its parser process {imp['parser_cpu_s']} s, PostgreSQL "
         f"{imp['postgres_cpu_s']} s; CPU µs a row: {per_row}); "
         f"created {imp['created']:,}, updated {imp['updated']:,}, "
         f"failed {imp['failed']}, errors {imp['errors']}")
    say(f"   raw COPY: {results['raw']['contacts_per_s']:,} contacts/s ({results['raw']['elapsed_s']} s)")
    say(f"   ratio {results['ratio']} (target >= {TARGET_RATIO}); target {TARGET_RATE:,}/s: "
         f"{'PASS' if results['pass'] else 'FAIL'}")
    p = results["profile"]
    split = ", ".join(f"{k} {v}" for k, v in p["split_us_per_row"].items())
    say(f"   one {p['rows']:,}-row import in-process, alone: {p['rows_per_s']:,} rows/s, service CPU "
         f"{p['cpu_us_per_row']} µs/row ({split}); PostgreSQL {p['pg_ms_per_chunk']} ms per chunk "
         f"({p['chunks']} chunks)")
    return results
