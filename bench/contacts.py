"""The single add/update benchmark: ``POST /api/v1/contact`` on PostgreSQL, what one call costs the service.

A fresh PostgreSQL database of this run (``bench_contacts_<pid>``, migrated to ``BENCH_CONTACTS_REVISION``,
default the head, so the cost before and after a migration can be compared) with the real ``stitcher serve``
(worker off) and a private redis-server: ``ROUNDS`` times, ``CONTACTS`` new contacts (external ID, email,
phone) with ``CONCURRENCY`` in flight, then the same contacts updated (a name, a language, a field). Per phase:
requests/s and the CPU each process used per call (the service, its PostgreSQL backends) — the best round of
each — and from ``pg_stat_user_tables`` how many of the contacts' row updates were HOT (no index touched).
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
from bench.stitch import Bench, own_database, served, start_redis

CONTACTS, CONCURRENCY, ROUNDS, SECONDS = 500, 16, 3, 10.0


def _prepare(backend: str, tmp: Path) -> tuple[str, str | None]:
    revision = os.environ.get("BENCH_CONTACTS_REVISION", "head")
    if revision == "head":
        return own_database(backend, tmp, "contacts")
    from stitcher.store import migrate

    saved = migrate.upgrade
    migrate.upgrade = lambda settings, rev="head": saved(settings, revision)  # type: ignore[assignment]
    try:
        return own_database(backend, tmp, "contacts")
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


async def _hot(db: Any) -> tuple[int, int]:
    from sqlalchemy import text

    async with db.sessions() as session:
        row = (await session.execute(text("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                                          "WHERE relname = 'contacts'"))).one()
    return int(row[0]), int(row[1])


async def measure(url: str, db_url: str, redis_url: str, service_pid: int) -> dict[str, Any]:
    b = Bench(url, db_url, redis_url, {"service": service_pid})
    out: dict[str, Any] = {"new": [], "existing": []}
    try:
        await b.add_update(_bodies("warm", update=False)[:CONCURRENCY * 4], SECONDS)  # connections, caches
        for _ in range(ROUNDS):
            tag = uuid.uuid4().hex[:8]
            out["new"].append(await b.add_update(_bodies(tag, update=False), SECONDS))
            await asyncio.sleep(1.5)  # the statistics collector's flush
            before = await _hot(b.db)
            out["existing"].append(await b.add_update(_bodies(tag, update=True), SECONDS))
            await asyncio.sleep(1.5)
            after = await _hot(b.db)
            out["existing"][-1]["contacts_updates"] = after[0] - before[0]
            out["existing"][-1]["contacts_hot_updates"] = after[1] - before[1]
    finally:
        await b.close()
    result: dict[str, Any] = {}
    for phase, rounds in out.items():
        best = min(rounds, key=lambda r: r["cpu_ms_per_request"].get("service", 1e9))
        result[phase] = {"rps": best["rps"], "cpu_ms_per_request": best["cpu_ms_per_request"],
                         "statuses": best["statuses"], "errors": best["errors"],
                         "service_cpu_ms_rounds": [r["cpu_ms_per_request"].get("service") for r in rounds],
                         **{k: best[k] for k in ("contacts_updates", "contacts_hot_updates") if k in best}}
    return result


def main() -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="stitcher-bench-contacts-"))
    revision = os.environ.get("BENCH_CONTACTS_REVISION", "head")
    try:
        with Children() as children:
            _, redis_url = start_redis(children, tmp)
            with served(children, tmp, "postgresql", redis_url, _prepare) as (service, url, db_url):
                result = asyncio.run(measure(url, db_url, redis_url, service.pid))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"   PostgreSQL at migration {revision}: POST /api/v1/contact, {CONCURRENCY} in flight, "
        f"{CONTACTS} contacts, best of {ROUNDS}")
    for phase in ("new", "existing"):
        x = result[phase]
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in x["cpu_ms_per_request"].items() if k != "bench")
        hot = (f"; contacts row updates {x['contacts_updates']}, HOT {x['contacts_hot_updates']}"
               if "contacts_updates" in x else "")
        say(f"   {phase:<9} {x['rps']:>7.1f} req/s  CPU ms/call: {cpu}  (service per round: "
            f"{x['service_cpu_ms_rounds']}){hot}")
    return {"revision": revision, **result}


if __name__ == "__main__":
    main()
