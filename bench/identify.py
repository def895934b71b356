"""The signed-identify benchmark: ``POST /t/identify`` answered, and the links the consumer makes of them.

For each backend — SQLite (a fresh temp file) and PostgreSQL (``bench_identify_<pid>``, created, migrated,
dropped) — beside a private redis-server, the real ``stitcher serve`` with ``IDENTIFY_SECRET`` set and the
worker (and so the identify consumer) on:

1. ``VISITORS`` visitors each send one beacon of ``VIEWS`` page views (their anonymous history).
2. Collector: each visitor's signed identify (a new external ID each), ``CONCURRENCY`` in flight —
   identifies/s of 202s, p50/p99, the service's CPU per request (the consumer works meanwhile and is counted
   too, so this is an upper bound of the collector's share).
3. Links: the time from the first identify until every contact exists with its history on its timeline and
   the stream is empty — new contacts linked and stitched per second.
4. Repeats: every visitor identifies again (a site identifying on every page): the time until the stream is
   empty — each repeat is one read and no write.
5. Baseline: as many other visitors (same histories) linked by the backend's own call, ``POST
   /api/v1/contact {externalCustomerId, visitorIds}``, ``CONCURRENCY`` in flight — what identify's link is
   made of, without the stream.
The beacon path is not touched by identify (its route is aiohttp's, handed over by the edge); ``bench.tracker``
measures the beacon.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.common import HOST, VENV_BIN, Children, cpu_seconds, free_port, per_backend, say, wait_http
from bench.stitch import _pct, _run, drop_database, own_database, start_redis

VISITORS, VIEWS, CONCURRENCY = 1000, 3, 16
SECRET = "bench-identify-secret"
API_KEY = "bench-key"
DRAIN_TIMEOUT_S = 300.0


def signed(external_id: str) -> str:
    return hmac.new(SECRET.encode(), external_id.encode(), hashlib.sha256).hexdigest()


async def _in_flight(n: int, work: Any) -> None:
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await work(i)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def measure(base: str, redis_url: str, service_pid: int) -> dict[str, Any]:
    from redis.asyncio import Redis

    from tracker.keys import IDENTIFY

    tag = uuid.uuid4().hex[:6]
    vids = [str(uuid.uuid4()) for _ in range(VISITORS)]
    now = int(time.time() * 1000)
    redis = Redis.from_url(redis_url)
    auth = aiohttp.BasicAuth("backend", API_KEY)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     connector=aiohttp.TCPConnector(limit=CONCURRENCY * 2)) as http:
        async def beacon(i: int) -> None:
            events = [{"id": str(uuid.uuid4()), "type": "page_view", "ts": now + j,
                       "url": f"https://shop.example/{tag}/{i}/{j}"} for j in range(VIEWS)]
            async with http.post(f"{base}/t", data=orjson.dumps({"vid": vids[i], "sent_at": now, "events": events}),
                                 headers={"Content-Type": "text/plain"}) as r:
                assert r.status == 204, await r.text()

        await _in_flight(VISITORS, beacon)
        latencies: list[float] = []
        statuses: dict[int, int] = {}

        async def identify(i: int) -> None:
            ext = f"id-{tag}-{i}"
            started = time.perf_counter()
            async with http.post(f"{base}/t/identify", headers={"Content-Type": "text/plain"}, data=orjson.dumps(
                    {"externalCustomerId": ext, "signature": signed(ext), "vid": vids[i]})) as r:
                await r.read()
            latencies.append(time.perf_counter() - started)
            statuses[r.status] = statuses.get(r.status, 0) + 1

        async def drained() -> float:
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while time.monotonic() < deadline:
                if not await redis.xlen(IDENTIFY):
                    break
                await asyncio.sleep(0.05)
            return time.monotonic()

        cpu0, t0 = cpu_seconds(service_pid), time.monotonic()
        await _in_flight(VISITORS, identify)
        answered = time.monotonic()
        cpu_answered = cpu_seconds(service_pid)
        done = await drained()
        cpu_done = cpu_seconds(service_pid)
        async with http.get(f"{base}/api/v1/contacts", params={"externalCustomerId": f"id-{tag}-{VISITORS - 1}"},
                            auth=auth) as r:
            last = await r.json()
        linked_ok = bool(last)
        if linked_ok:
            async with http.get(f"{base}/api/v1/contact/{last[0]['id']}/events", auth=auth) as r:
                linked_ok = len((await r.json())["events"]) == VIEWS
        statuses_repeat_before = dict(statuses)
        r0 = time.monotonic()
        await _in_flight(VISITORS, identify)
        repeat_done = await drained()
        # the baseline: the same links made by the backend's own call, POST /api/v1/contact with visitorIds
        api_vids = [str(uuid.uuid4()) for _ in range(VISITORS)]
        vids[:] = api_vids
        await _in_flight(VISITORS, beacon)

        async def api_link(i: int) -> None:
            async with http.post(f"{base}/api/v1/contact", auth=auth, json={
                    "externalCustomerId": f"api-{tag}-{i}", "visitorIds": [api_vids[i]]}) as r:
                assert r.status == 200, await r.text()

        cpu_api0, a0 = cpu_seconds(service_pid), time.monotonic()
        await _in_flight(VISITORS, api_link)
        api_done, cpu_api = time.monotonic(), cpu_seconds(service_pid)
    await redis.aclose()
    return {
        "identify_rps": round(VISITORS / (answered - t0), 1), "p50_ms": _pct(latencies[:VISITORS], 50),
        "p99_ms": _pct(latencies[:VISITORS], 99), "statuses": {str(k): v for k, v in statuses_repeat_before.items()},
        "service_cpu_ms_per_identify_answered": round((cpu_answered - cpu0) * 1000 / VISITORS, 2),
        "links_per_s": round(VISITORS / (done - t0), 1),
        "service_cpu_ms_per_link": round((cpu_done - cpu0) * 1000 / VISITORS, 2),
        "repeats_drained_per_s": round(VISITORS / (repeat_done - r0), 1),
        "api_links_per_s": round(VISITORS / (api_done - a0), 1),
        "service_cpu_ms_per_api_link": round((cpu_api - cpu_api0) * 1000 / VISITORS, 2),
        "last_contact_has_its_history": linked_ok,
    }


def run_backend(backend: str, children: Children, tmp: Path, redis_url: str) -> dict[str, Any]:
    db_url, created = own_database(backend, tmp, "identify")
    try:
        env = dict(os.environ)
        env.update(REDIS_URL=redis_url, DATABASE_URL=db_url, API_KEYS=API_KEY, WORKER_ENABLED="1", LOG_JSON="1",
                   VAR_DIR=str(tmp), HOST=HOST, IDENTIFY_SECRET=SECRET)
        port = free_port()
        service = children.start(f"stitcher serve ({backend})", [str(VENV_BIN / "stitcher"), "serve", "--port",
                                                                  str(port)],
                                 env=env, log=tmp / f"service-{backend}.stderr")
        try:
            failure = wait_http(service, f"http://{HOST}:{port}/healthz", timeout=30)
            if failure is not None:
                raise RuntimeError(failure)
            result = _run(lambda: measure(f"http://{HOST}:{port}", redis_url, service.pid))
        finally:
            children.stop(service)
    finally:
        drop_database(db_url, created)
    say(f"      {result}")
    return result


def main() -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {"visitors": VISITORS, "views": VIEWS, "concurrency": CONCURRENCY,
                               "cores": os.cpu_count()}
    tmp = Path(tempfile.mkdtemp(prefix="stitcher-bench-identify-"))
    try:
        with Children() as children:
            _, redis_url = start_redis(children, tmp)
            results["backends"] = per_backend(lambda backend: run_backend(backend, children, tmp, redis_url))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say()
    say(f"  signed identify: {VISITORS} visitors with {VIEWS} anonymous page views each, {CONCURRENCY} in flight")
    say(f"  {'backend':<11}{'identify/s':>11}{'p50 ms':>8}{'p99 ms':>8}{'links/s':>9}{'CPU ms/link':>12}"
        f"{'repeats/s':>10}{'API links/s':>12}{'CPU ms/API link':>16}")
    for name, r in results["backends"].items():
        if "error" in r:
            say(f"  {name:<11}error: {r['error']}")
            continue
        say(f"  {name:<11}{r['identify_rps']:>11}{r['p50_ms']:>8}{r['p99_ms']:>8}{r['links_per_s']:>9}"
            f"{r['service_cpu_ms_per_link']:>12}{r['repeats_drained_per_s']:>10}{r['api_links_per_s']:>12}"
            f"{r['service_cpu_ms_per_api_link']:>16}")
    results["pass"] = all("error" not in r and r["last_contact_has_its_history"]
                          for r in results["backends"].values())
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    return results
