"""A bounded soak: steady mixed load on ``stitcher serve --workers 2``, process and Redis memory sampled over time.

A private redis-server, a PostgreSQL database of this run and the service with a short anonymous-history TTL
(``ANON_TTL_SECONDS``, ``BENCH_SOAK_TTL`` s, default 60). For ``BENCH_SOAK_SECONDS`` (default 240) a load
generator in this process keeps up, at fixed rates: beacons from a rolling set of visitors (each visitor is
active for ``ACTIVE_S`` seconds, then leaves its history to expire), subscribes (contact add/update with the
visitor cookie, so the visitor is linked and its history stitched; then later beacons go through the worker to
the timeline), API events, and a small bulk import now and then. Every ``SAMPLE_S`` seconds it samples the RSS
of each service process (/proc) and Redis's ``INFO memory`` ``used_memory``.

Reported: start, peak and end of each, and the slope (least squares) over the samples taken once the TTLs
apply (after TTL + ``ACTIVE_S`` s), as KiB per minute. Known growth that TTLs do not bound is reported apart:
a linked visitor's link key lives as long as the cookie (400 days), so Redis grows by the links the
subscribes made (their count and average size are measured at the end).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import redis

from bench.common import HOST, say
from bench.workers import redis_and_postgres, service_env, service_pids, start_workers

SOAK_SECONDS = int(os.environ.get("BENCH_SOAK_SECONDS", "240"))
TTL_S = int(os.environ.get("BENCH_SOAK_TTL", "60"))
SAMPLE_S = 5.0
PROCESSES = 2
BEACONS_PER_S = 150
ACTIVE_S, NEW_VISITORS_PER_S = 30, 10  # 300 visitors active at a time
SUBSCRIBES_PER_S, EVENTS_PER_S = 2.0, 2.0
IMPORT_EVERY_S, IMPORT_ROWS = 20.0, 50
CONTACT_POOL = 400  # subscribes and imports cycle through these people: adds first, then updates
CONCURRENCY = 48
API_KEY = "soak-key"


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Load:
    """The load generator: fixed-rate tickers, each request a task bounded by ``CONCURRENCY``."""

    def __init__(self, base: str) -> None:
        import aiohttp

        self.base = base
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                          connector=aiohttp.TCPConnector(limit=CONCURRENCY),
                                          timeout=aiohttp.ClientTimeout(total=30))
        self.auth = {"Authorization": aiohttp.BasicAuth("soak", API_KEY).encode(),
                     "Content-Type": "application/json"}
        self.slots = asyncio.Semaphore(CONCURRENCY)
        self.statuses: Counter[str] = Counter()
        self.behind = 0  # ticks skipped because CONCURRENCY requests were still in flight
        self.visitors: deque[str] = deque(maxlen=ACTIVE_S * NEW_VISITORS_PER_S)
        self.tasks: set[asyncio.Task[None]] = set()
        self.n = 0

    async def close(self) -> None:
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=30)
        await self.http.close()

    async def _post(self, kind: str, path: str, body: bytes, headers: dict[str, str]) -> None:
        try:
            async with self.http.post(self.base + path, data=body, headers=headers) as r:
                await r.read()
                self.statuses[f"{kind} {r.status}"] += 1
        except Exception as exc:
            self.statuses[f"{kind} {type(exc).__name__}"] += 1
        finally:
            self.slots.release()

    def fire(self, kind: str, path: str, body: Any, api: bool = True) -> None:
        if self.slots.locked():
            self.behind += 1
            return
        # acquired here, without waiting (not locked): a slow service shows as `behind`, not as a queue
        self.slots._value -= 1
        headers = self.auth if api else {"Content-Type": "text/plain"}
        task = asyncio.create_task(self._post(kind, path, orjson.dumps(body), headers))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def beacon(self) -> None:
        now = int(time.time() * 1000)
        vid = random.choice(self.visitors)
        events = [{"id": str(uuid.uuid4()), "type": "page_view", "ts": now,
                   "url": f"https://shop.example.com/p/{random.randrange(500)}", "title": "Shoes"}
                  for _ in range(random.randint(1, 3))]
        self.fire("beacon", "/t", {"vid": vid, "sent_at": now, "events": events}, api=False)

    def subscribe(self) -> None:
        k = random.randrange(CONTACT_POOL)
        self.fire("subscribe", "/api/v1/contact", {
            "externalCustomerId": f"SOAK-{k}", "firstName": f"N{self.n}",
            "channels": [{"type": "email", "value": f"soak{k}@example.com"}],
            "visitorIds": [random.choice(self.visitors)]})
        self.n += 1

    def event(self) -> None:
        k = random.randrange(CONTACT_POOL)
        self.fire("event", "/api/v2/event", {"eventTypeKey": "orderPaid", "keyValue": f"SOAK-{k}", "params": [
            {"name": "externalCustomerId", "value": f"SOAK-{k}"}, {"name": "total", "value": "12.50"}]})

    def bulk(self) -> None:
        rows = [{"externalCustomerId": f"SOAK-{k}", "lastName": f"L{self.n}",
                 "channels": [{"type": "email", "value": f"soak{k}@example.com"}]}
                for k in random.sample(range(CONTACT_POOL), IMPORT_ROWS)]
        self.fire("import", "/api/v1/contacts", {"dedupeOn": "externalCustomerId", "contacts": rows})

    def new_visitor(self) -> None:
        self.visitors.append(str(uuid.uuid4()))


async def _every(rate: float, action: Callable[[], None], until: float) -> None:
    """``action`` ``rate`` times a second on a fixed schedule (no drift) until ``until``."""
    interval, due = 1.0 / rate, time.monotonic()
    while due < until:
        action()
        due += interval
        await asyncio.sleep(max(0.0, due - time.monotonic()))


async def _sample_every(sample: Callable[[], Awaitable[None]], until: float) -> None:
    """``sample`` every ``SAMPLE_S`` seconds while the load runs, the last one at its end."""
    due = time.monotonic()
    while due <= until:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        await sample()
        due = min(due + SAMPLE_S, until) if due < until else until + 1


async def soak(base: str, parent_pid: int, redis_url: str) -> dict[str, Any]:
    client = redis.asyncio.Redis.from_url(redis_url)
    load = Load(base)
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    until = started + SOAK_SECONDS

    async def sample() -> None:
        pids = service_pids(parent_pid)
        info = await client.info("memory")
        samples.append({"t": round(time.monotonic() - started, 1),
                        "rss_kib": {str(p): rss_kib(p) for p in pids},
                        "rss_total_kib": sum(rss_kib(p) for p in [parent_pid, *pids]),
                        "redis_used_kib": int(info["used_memory"]) // 1024,
                        "redis_keys": int(await client.dbsize()),
                        "requests": sum(load.statuses.values())})

    for _ in range(ACTIVE_S * NEW_VISITORS_PER_S):
        load.new_visitor()
    try:
        await asyncio.gather(
            _every(NEW_VISITORS_PER_S, load.new_visitor, until), _every(BEACONS_PER_S, load.beacon, until),
            _every(SUBSCRIBES_PER_S, load.subscribe, until), _every(EVENTS_PER_S, load.event, until),
            _every(1.0 / IMPORT_EVERY_S, load.bulk, until), _sample_every(sample, until))
        links = [k async for k in client.scan_iter(match="st:*:link", count=1000)]
        link_bytes = [await client.memory_usage(k) or 0 for k in links[:200]]
    finally:
        await load.close()
        await client.aclose()
    return {"samples": samples, "statuses": dict(sorted(load.statuses.items())), "behind": load.behind,
            "links": len(links), "bytes_per_link": round(sum(link_bytes) / len(link_bytes)) if link_bytes else 0}


def _slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / var * 60 if var else None


def _rounded(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    samples = raw["samples"]
    settled = TTL_S + ACTIVE_S
    window = [s for s in samples if s["t"] >= settled]
    out: dict[str, Any] = {"seconds": SOAK_SECONDS, "ttl_s": TTL_S, "settled_after_s": settled,
                           "processes": PROCESSES, "rates_per_s": {
                               "beacons": BEACONS_PER_S, "subscribes": SUBSCRIBES_PER_S, "events": EVENTS_PER_S,
                               "imports": round(1 / IMPORT_EVERY_S, 3), "import_rows": IMPORT_ROWS}}
    for name in ("rss_total_kib", "redis_used_kib", "redis_keys"):
        values = [s[name] for s in samples]
        out[name] = {"start": values[0], "peak": max(values), "end": values[-1],
                     "settled_start": window[0][name] if window else None,
                     "slope_per_min_after_settling": _rounded(_slope_per_min([(x["t"], x[name]) for x in window])),
                     "slope_per_min_last_half": _rounded(_slope_per_min(
                         [(x["t"], x[name]) for x in window[len(window) // 2:]]))}
    out["links_made"] = raw["links"]
    out["bytes_per_link"] = raw["bytes_per_link"]
    out["statuses"] = raw["statuses"]
    out["ticks_behind"] = raw["behind"]
    out["samples"] = samples
    return out


def report(r: dict[str, Any]) -> None:
    say()
    say(f"Soak: {r['seconds']} s of mixed load on `stitcher serve --workers {r['processes']}` (PostgreSQL, private "
        f"Redis), anonymous TTL {r['ttl_s']} s; per second: {r['rates_per_s']['beacons']} beacons (1-3 events), "
        f"{r['rates_per_s']['subscribes']:g} subscribes, {r['rates_per_s']['events']:g} API events, an import of "
        f"{r['rates_per_s']['import_rows']} rows every {IMPORT_EVERY_S:g} s")
    say(f"  {'t (s)':>7}{'RSS all processes (MiB)':>26}{'Redis used_memory (MiB)':>26}{'Redis keys':>12}"
        f"{'requests':>10}")
    step = max(1, len(r["samples"]) // 16)
    for s in r["samples"][::step] + ([r["samples"][-1]] if (len(r["samples"]) - 1) % step else []):
        say(f"  {s['t']:>7.0f}{s['rss_total_kib'] / 1024:>26.1f}{s['redis_used_kib'] / 1024:>26.2f}"
            f"{s['redis_keys']:>12,}{s['requests']:>10,}")
    settled = f"slope once settled (t >= {r['settled_after_s']} s)"
    say(f"  {'':<24}{'start':>10}{'peak':>10}{'end':>10}{settled:>40}{'its last half':>18}")
    for name, label, unit in (("rss_total_kib", "RSS, all processes", 1024),
                              ("redis_used_kib", "Redis used_memory", 1024)):
        m = r[name]
        slope, last = m["slope_per_min_after_settling"], m["slope_per_min_last_half"]
        say(f"  {label:<24}{m['start'] / unit:>8.1f}Mi{m['peak'] / unit:>8.1f}Mi{m['end'] / unit:>8.1f}Mi"
            f"{(f'{slope:+,.0f} KiB/min' if slope is not None else 'n/a'):>40}"
            f"{(f'{last:+,.0f} KiB/min' if last is not None else 'n/a'):>18}")
    k = r["redis_keys"]
    say(f"  Redis keys: start {k['start']:,}, peak {k['peak']:,}, end {k['end']:,}; links made by the subscribes "
        f"(kept 400 days, not bounded by the TTL): {r['links_made']:,} x ~{r['bytes_per_link']} bytes")
    bad = {s: n for s, n in r["statuses"].items() if not s.split()[1].startswith("2")}
    say(f"  answers: {r['statuses']}")
    if bad or r["ticks_behind"]:
        say(f"  !! not 2xx: {bad}; ticks skipped because {CONCURRENCY} requests were in flight: {r['ticks_behind']}")
    say("  caveat: a shared 2-core machine (the load generator, Redis and PostgreSQL run on it too); RSS moves with "
        "the allocator's arenas, so read the slope against the level, not as bytes leaked")


def main() -> dict[str, Any]:
    with redis_and_postgres("stitcher-bench-soak-") as (children, tmp, _, redis_url, db_url):
        env = service_env(tmp, redis_url, db_url, ANON_TTL_SECONDS=str(TTL_S), API_KEYS=API_KEY,
                          BEACON_LOG_SAMPLE="0")
        service, port = start_workers(children, tmp, PROCESSES, env, label="-soak")
        say(f"   stitcher serve --workers {PROCESSES} on port {port} (pids {service_pids(service.pid)}), "
            f"soaking for {SOAK_SECONDS} s ...")
        try:
            raw = asyncio.run(soak(f"http://{HOST}:{port}", service.pid, redis_url))
        finally:
            children.stop(service, timeout=90)
    results = summarise(raw)
    report(results)
    return results


if __name__ == "__main__":
    main()
