"""The events benchmark: ``POST /api/v2/event`` to known contacts, 16 in flight, on SQLite and PostgreSQL.

For each backend — SQLite (a fresh temp file) and PostgreSQL (a database of this run, ``bench_events_<pid>``,
created, migrated and dropped again) — with a private redis-server and the real ``stitcher serve`` (worker off,
JSON request logs to a file):

1. ``CONTACTS`` contacts are created through ``POST /api/v1/contact`` (external ID, email, phone).
2. Events/s: ``POST /api/v2/event`` with ``CONCURRENCY`` in flight for ``SECONDS``, each a new event naming
   one of those contacts by ``externalCustomerId`` (plus an email param and three data params, ~300 bytes) —
   each lands on a timeline (checked: every answer is ``stored``). Twice: as the platform's clients send
   them (no key), and each with its own ``Idempotency-Key`` (the event then also writes its receipt).
3. Baseline, in the same run and interleaved with (2): ``POST /api/v1/contact`` updating the same contacts
   with the same concurrency — the service's other single-person write, through the same locks and store.
Better of ``ROUNDS`` alternating rounds of each; the ratio events/s ÷ add/update req/s is what carries over
between machines. CPU per request (service, PostgreSQL backends, Redis) is reported beside wall figures.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from bench.common import Children, cpu_seconds, per_backend, say
from bench.stitch import (
    Bench,
    _pct,
    _run,
    own_database,
    served,
    start_redis,
)

CONTACTS, CONCURRENCY, SECONDS, ROUNDS = 200, 16, 5.0, 2


def prepare(backend: str, tmp: Path) -> tuple[str, str | None]:
    """An empty migrated database: its URL and the PostgreSQL database to drop after (None for SQLite)."""
    return own_database(backend, tmp, "events")


def contact_body(tag: str, i: int, update: bool) -> bytes:
    return orjson.dumps({"externalCustomerId": f"ev-{tag}-{i}", "firstName": "Olena" if update else "Ann",
                         "channels": [{"type": "email", "value": f"ev{i}.{tag}@example.com"},
                                      {"type": "sms", "value": f"+38067{2000000 + i:07d}"}]})


def event_body(tag: str, i: int) -> bytes:
    n = i % CONTACTS
    return orjson.dumps({"eventTypeKey": "productViewed", "keyValue": f"ev-{tag}-{n}", "params": [
        {"name": "externalCustomerId", "value": f"ev-{tag}-{n}"},
        {"name": "email", "value": f"ev{n}.{tag}@example.com"},
        {"name": "productId", "value": f"SKU-{i % 97}"}, {"name": "price", "value": "59.90"},
        {"name": "url", "value": f"https://shop.example.com/p/{i % 97}"}]})


async def throughput(b: Bench, path: str, make: Any, seconds: float, expect: str | None,
                     keyed: bool = False) -> dict[str, Any]:
    """``make(i)`` bodies POSTed to ``path``, CONCURRENCY in flight, for ``seconds``: requests/s of 200s."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    counter = iter(range(10**9))
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop:
            i = next(counter)
            headers = {"Idempotency-Key": f"{uuid.uuid4().hex}"} if keyed else {}
            started = time.perf_counter()
            async with b.http.post(b.base_url + path, data=make(i), headers=headers) as r:
                raw = await r.read()
            latencies.append(time.perf_counter() - started)
            statuses[r.status] += 1
            answer = orjson.loads(raw) if r.status == 200 else raw[:200]
            if (r.status != 200 or (expect and answer.get("status") != expect)) and len(errors) < 3:
                errors.append(f"{r.status}: {answer!r}"[:200])

    wall, cpu = await b.meter.during(asyncio.gather(*(worker() for _ in range(CONCURRENCY))))
    ok = statuses.get(200, 0)
    return {"requests": len(latencies), "ok": ok, "rps": round(ok / wall, 1),
            "cpu_ms_per_request": {k: round(v * 1000 / max(1, len(latencies)), 2) for k, v in cpu.items()},
            "p50_ms": _pct(latencies, 50), "p99_ms": _pct(latencies, 99),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "errors": errors}


async def measure(base_url: str, db_url: str, redis_url: str, pids: dict[str, int]) -> dict[str, Any]:
    b = Bench(base_url, db_url, redis_url, pids)
    tag = uuid.uuid4().hex[:8]
    try:
        for i in range(CONTACTS):
            status, answer, _ = await b.post("/api/v1/contact", contact_body(tag, i, update=False))
            if status != 200:
                raise RuntimeError(f"add/update answered {status}: {answer}")
        await throughput(b, "/api/v2/event", lambda i: event_body(tag, i), 1.0, "stored")  # warm-up
        events: list[dict[str, Any]] = []
        keyed: list[dict[str, Any]] = []
        baseline: list[dict[str, Any]] = []
        for _ in range(ROUNDS):
            events.append(await throughput(b, "/api/v2/event", lambda i: event_body(tag, i), SECONDS, "stored"))
            keyed.append(await throughput(b, "/api/v2/event", lambda i: event_body(tag, i), SECONDS, "stored",
                                          keyed=True))
            baseline.append(await throughput(b, "/api/v1/contact", lambda i: contact_body(tag, i % CONTACTS, True),
                                             SECONDS, None))
            say(f"      events {events[-1]['rps']} /s, with a key {keyed[-1]['rps']} /s, "
                 f"add/update {baseline[-1]['rps']} req/s")
    finally:
        await b.close()
    best_e, best_k, best_b = (max(x, key=lambda r: r["rps"]) for x in (events, keyed, baseline))
    return {"events": best_e, "events_with_key": best_k, "add_update_existing": best_b,
            "rounds": {"events": [x["rps"] for x in events], "events_with_key": [x["rps"] for x in keyed],
                       "add_update": [x["rps"] for x in baseline]},
            "ratio": round(best_e["rps"] / best_b["rps"], 2) if best_b["rps"] else None,
            "ratio_with_key": round(best_k["rps"] / best_b["rps"], 2) if best_b["rps"] else None,
            "clean": all(not x["errors"] for x in events + keyed + baseline)}


def run_backend(backend: str, children: Children, tmp: Path, redis_pid: int, redis_url: str) -> dict[str, Any]:
    with served(children, tmp, backend, redis_url, prepare) as (service, base_url, db_url):
        before = cpu_seconds(service.pid)
        result = _run(lambda: measure(base_url, db_url, redis_url, {"service": service.pid, "redis": redis_pid}))
        result["service_cpu_s"] = round(cpu_seconds(service.pid) - before, 2)
    return result


def main() -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {"concurrency": CONCURRENCY, "contacts": CONTACTS, "seconds": SECONDS,
                               "rounds": ROUNDS, "cores": os.cpu_count(), "backends": {}}
    tmp = Path(tempfile.mkdtemp(prefix="stitcher-bench-events-"))
    try:
        with Children() as children:
            redis_child, redis_url = start_redis(children, tmp)
            results["backends"] = per_backend(
                lambda backend: run_backend(backend, children, tmp, redis_child.pid, redis_url))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say()
    say(f"  POST /api/v2/event to known contacts vs POST /api/v1/contact (update), {CONCURRENCY} in flight, "
         f"better of {ROUNDS} rounds of {SECONDS:g} s")
    say(f"  {'backend':<11}{'key':<5}{'events/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'add/upd/s':>10}{'ratio':>7}  "
         "service CPU ms/request (add/update)")
    for name, r in results["backends"].items():
        if "error" in r:
            say(f"  {name:<11}error: {r['error']}")
            continue
        a = r["add_update_existing"]
        for label, e, ratio in (("no", r["events"], r["ratio"]), ("yes", r["events_with_key"], r["ratio_with_key"])):
            say(f"  {name:<11}{label:<5}{e['rps']:>9.1f}{e['p50_ms']:>8}{e['p99_ms']:>8}{a['rps']:>10.1f}{ratio:>7}  "
                 f"{e['cpu_ms_per_request'].get('service', 0):.2f} ({a['cpu_ms_per_request'].get('service', 0):.2f})"
                 + ("" if r["clean"] else f"  errors: {e['errors'] or a['errors']}"))
    results["pass"] = all("error" not in r and r["clean"] for r in results["backends"].values())
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    return results
