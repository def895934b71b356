"""The tracker benchmark: what the beacon path costs (DESIGN "What the beacon path costs on this machine").

1. Starts a private redis-server and the real service (``stitcher serve``; when that cannot start yet, the
   tracker app alone through ``bench.tracker_server``) with JSON request logs on stderr, as in production,
   the bare aiohttp baseline (``bench.bare``) and the pipeline reference (``bench.bare --pipeline``: the bare
   handler plus a group-commit write, nothing else).
2. Redis memory per stored event: 100 visitors x 100 realistic events POSTed to the fresh service, every key's
   ``MEMORY USAGE ... SAMPLES 0`` summed and compared with the events' own compact JSON (target <= 1.5x).
3. Throughput: ``wrk -t2 -c64 -d10s --latency`` with ``bench/beacon.lua`` (a new event id per request, a few
   thousand visitors), bare / pipeline / service twice over after a warm-up, the better run of each kept.
   Targets: service/bare >= 1.0 and p99 < 5 ms at 64 connections, no non-2xx answer.
4. The tracking script's size, minified and gzipped (target <= 3 KB gzipped).

``BENCH_PROFILE=1`` (or ``python -m bench --profile``) adds one more loaded run of the service under py-spy
and prints where its time goes. Everything runs on 127.0.0.1 and is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import redis

from bench.common import (
    HOST,
    ROOT,
    VENV_BIN,
    WRK_INSTALL_HINT,
    Child,
    Children,
    WrkResult,
    find_wrk,
    free_port,
    http_get,
    http_status,
    prometheus_value,
    run_wrk,
    say,
    wait_http,
    wait_quiet,
    with_bench_limits,
)

LUA = Path(__file__).with_name("beacon.lua")
WRK_THREADS, WRK_CONNECTIONS, RUN_SECONDS, WARMUP_SECONDS = 2, 64, 10, 2
BENCH_VISITORS = 4096  # distinct visitor ids in the wrk script
MEM_VISITORS, MEM_EVENTS_PER_VISITOR = 100, 100
MEM_EVENTS_PER_REQUEST = 10  # the script batches too; 1,000 requests keep this part short
TARGET_RATIO, TARGET_P99_MS, TARGET_MEM_RATIO, TARGET_GZIP_BYTES = 1.0, 5.0, 1.5, 3 * 1024
USER_AGENT = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/131.0.0.0 Safari/537.36")
BEACON_HEADERS = {"Content-Type": "text/plain", "User-Agent": USER_AGENT, "Origin": "https://shop.example.com"}


# --- 4. the tracking script ------------------------------------------------------------------------------

def script_size() -> dict[str, Any]:
    path = ROOT / "static" / "t.js"
    if not path.exists():
        return {"status": "missing", "path": str(path)}
    from tracker.script import Script

    script = Script.load(path)
    gz = len(script.gzipped)
    return {"status": "ok", "source_bytes": path.stat().st_size, "minified_bytes": len(script.minified),
            "gzipped_bytes": gz, "target_gzipped_bytes": TARGET_GZIP_BYTES, "pass": gz <= TARGET_GZIP_BYTES}


# --- processes -----------------------------------------------------------------------------------------

def start_redis(children: Children, tmp: Path) -> tuple[Child, str]:
    from tracker.embedded_redis import find_redis_server

    port = free_port()
    directory = tmp / "redis"
    directory.mkdir()
    child = children.start("redis-server", [
        find_redis_server(), "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
        "--dir", str(directory), "--logfile", str(directory / "redis.log"),
    ], log=tmp / "redis.out")
    url = f"redis://{HOST}:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                client.ping()
                return child, url
            except redis.ConnectionError:
                if not child.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start; see {directory / 'redis.log'}") from None
                time.sleep(0.02)
    finally:
        client.close()


def start_service(children: Children, tmp: Path, redis_url: str) -> tuple[Child, int, str]:
    """The real service: ``stitcher serve`` if it starts, else the tracker app through bench.tracker_server."""
    env = dict(os.environ)
    for name in ("PORT", "API_KEYS", "WORKER_ENABLED", "HISTORY_CAP", "ANON_TTL_DAYS", "MAX_BODY_BYTES",
                 "MAX_EVENTS", "STITCH_PAUSE_MS", "ALLOWED_ORIGINS"):
        env.pop(name, None)  # the defaults, whatever the shell has
    env.update(REDIS_URL=redis_url, DATABASE_URL=f"sqlite+aiosqlite:///{tmp / 'b.db'}", LOG_JSON="1",
               VAR_DIR=str(tmp), HOST=HOST)
    env = with_bench_limits(env)
    stitcher = VENV_BIN / "stitcher"
    reason = f"{stitcher} not found"
    if stitcher.exists():
        port = free_port()
        child = children.start("stitcher serve", [str(stitcher), "serve", "--port", str(port)], env=env,
                               log=tmp / "service.stderr")
        failure = wait_http(child, f"http://{HOST}:{port}/healthz", timeout=30)
        if failure is None:
            return child, port, "stitcher serve"
        children.stop(child)
        reason = failure
        (tmp / "service.stderr").rename(tmp / "stitcher-serve-failed.stderr")
    why = (reason.strip().splitlines() or ["?"])[-1][:300]
    say("   `stitcher serve` does not start yet; falling back to bench.tracker_server (tracker app alone).")
    say(f"   why: {why}")
    port = free_port()
    child = children.start("bench.tracker_server", [sys.executable, "-m", "bench.tracker_server",
                                                    "--port", str(port)], env=env, log=tmp / "service.stderr")
    failure = wait_http(child, f"http://{HOST}:{port}/healthz", timeout=20)
    if failure is not None:
        raise RuntimeError(f"the tracker does not start either: {failure}")
    return child, port, f"bench.tracker_server (fallback: `stitcher serve` failed to start: {why})"


def start_bare(children: Children, tmp: Path, pipeline_redis_url: str | None = None) -> tuple[Child, int]:
    port = free_port()
    name = "bench.bare --pipeline" if pipeline_redis_url else "bench.bare"
    extra = ["--pipeline", pipeline_redis_url] if pipeline_redis_url else []
    child = children.start(name, [sys.executable, "-m", "bench.bare", "--port", str(port), *extra],
                           log=tmp / ("pipeline.stderr" if pipeline_redis_url else "bare.stderr"))
    failure = wait_http(child, f"http://{HOST}:{port}/healthz", timeout=20)
    if failure is not None:
        raise RuntimeError(failure)
    return child, port


# --- 2. Redis memory per event ------------------------------------------------------------------------------

def _event(i: int, ts: int) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "type": "page_view", "ts": ts,
            "url": f"https://shop.example.com/products/item-{i % 37}?utm_source=newsletter",
            "ref": "https://www.google.com/", "title": "Blue shoes \u2013 Example Shop",
            "props": {"category": "shoes", "price": 59.9}}


async def _post_all(url: str, bodies: list[bytes], concurrency: int = 32) -> Counter[int]:
    import aiohttp

    statuses: Counter[int] = Counter()
    queue = list(reversed(bodies))
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker() -> None:
            while queue:
                body = queue.pop()
                async with session.post(url, data=body, headers=BEACON_HEADERS) as r:
                    await r.read()
                    statuses[r.status] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def _key_usage(client: redis.Redis) -> dict[bytes, tuple[int, bytes]]:
    """Every key with (MEMORY USAGE ... SAMPLES 0, TYPE)."""
    keys = list(client.scan_iter(count=1000))
    out: dict[bytes, tuple[int, bytes]] = {}
    for start in range(0, len(keys), 1000):
        chunk = keys[start:start + 1000]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0")  # type: ignore[no-untyped-call]
            pipe.type(key)
        replies = pipe.execute()
        for i, key in enumerate(chunk):
            usage, kind = replies[2 * i], replies[2 * i + 1]
            if usage is not None:
                out[key] = (int(usage), kind)
    return out


def _kind(key: bytes, kind: bytes) -> str:
    name = key.decode(errors="replace")
    if name.endswith(":ev"):
        return "visitor history (list)"
    if name.endswith(":ids"):
        return "stored event ids (set)"
    return f"other ({kind.decode()})"


def redis_memory(service_port: int, redis_url: str) -> dict[str, Any]:
    """Store MEM_VISITORS x MEM_EVENTS_PER_VISITOR events through POST /t; bytes of Redis per event."""
    from tracker.keys import VisitorKeys
    from tracker.settings import Settings

    client = redis.Redis.from_url(redis_url)
    try:
        time.sleep(0.5)  # let the service's start-up writes (worker consumer groups ...) land first
        before = _key_usage(client)
        used_before = int(client.info("memory")["used_memory"])
        version = str(client.info("server")["redis_version"])
        now = int(time.time() * 1000) - 3_600_000
        vids = [str(uuid.uuid4()) for _ in range(MEM_VISITORS)]
        bodies, json_sizes = [], []
        for first in range(0, MEM_EVENTS_PER_VISITOR, MEM_EVENTS_PER_REQUEST):
            for v, vid in enumerate(vids):
                batch = [_event(j, now + j * 20_000 + v)
                         for j in range(first, min(first + MEM_EVENTS_PER_REQUEST, MEM_EVENTS_PER_VISITOR))]
                json_sizes += [len(orjson.dumps(e)) for e in batch]
                bodies.append(orjson.dumps({"vid": vid, "sent_at": batch[-1]["ts"] + 150, "events": batch}))
        started = time.monotonic()
        statuses = asyncio.run(_post_all(f"http://{HOST}:{service_port}/t", bodies))
        post_seconds = time.monotonic() - started
        after = _key_usage(client)
        used_after = int(client.info("memory")["used_memory"])
        partitions = Settings().partitions
        pipe = client.pipeline(transaction=False)
        for vid in vids:
            pipe.lrange(VisitorKeys(vid, partitions).events, 0, -1)
        histories = pipe.execute()
        stored = sum(len(h) for h in histories)
        stored_json_avg = sum(len(x) for h in histories for x in h) / stored if stored else 0.0
    finally:
        client.close()
    by_kind: dict[str, int] = defaultdict(int)
    keys_by_kind: dict[str, int] = defaultdict(int)
    for key, (usage, kind) in after.items():
        delta = usage - before.get(key, (0, b""))[0]
        if delta:
            by_kind[_kind(key, kind)] += delta
            keys_by_kind[_kind(key, kind)] += 1
    total_after = sum(u for u, _ in after.values())
    total_before = sum(u for u, _ in before.values())
    events = MEM_VISITORS * MEM_EVENTS_PER_VISITOR
    per_event = (total_after - total_before) / stored if stored else float("nan")
    json_avg = sum(json_sizes) / len(json_sizes)
    ratio = per_event / json_avg
    return {
        "redis_version": version, "events_sent": events, "requests": len(bodies), "events_stored": stored,
        "statuses": {str(k): v for k, v in statuses.items()},
        "post_seconds": round(post_seconds, 2),
        "keys_before": len(before), "keys_after": len(after),
        "memory_usage_before": total_before, "memory_usage_after": total_after,
        "bytes_per_event": round(per_event, 1), "event_json_bytes": round(json_avg, 1),
        "stored_json_bytes": round(stored_json_avg, 1),  # what the service keeps per event (adds rt, t)
        "ratio": round(ratio, 3), "target_ratio": TARGET_MEM_RATIO, "pass": ratio <= TARGET_MEM_RATIO,
        "bytes_per_event_by_key_kind": {k: round(v / stored, 1) for k, v in sorted(by_kind.items())},
        "keys_by_kind": dict(keys_by_kind),
        "used_memory_delta_per_event": round((used_after - used_before) / stored, 1) if stored else None,
    }


# --- 3. throughput -----------------------------------------------------------------------------------------

def _bench_vids() -> list[str]:
    """The visitor ids beacon.lua uses (same format string)."""
    return [f"5e1f0b7a-0c2d-4e3f-8a4b-{i:012x}" for i in range(BENCH_VISITORS)]


def _stored_bench_events(redis_url: str) -> int:
    from tracker.keys import VisitorKeys
    from tracker.settings import Settings

    partitions = Settings().partitions
    client = redis.Redis.from_url(redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for vid in _bench_vids():
            pipe.llen(VisitorKeys(vid, partitions).events)
        return int(sum(pipe.execute()))
    finally:
        client.close()


def _batch_metrics(service_port: int) -> tuple[float, float] | None:
    """(commands, pipelines) so far from the service's group-commit histogram on /metrics."""
    body = http_get(f"http://{HOST}:{service_port}/metrics")
    if body is None:
        return None
    text = body.decode(errors="replace")
    total = prometheus_value(text, "stitcher_redis_write_batch_size_sum")
    count = prometheus_value(text, "stitcher_redis_write_batch_size_count")
    return (total, count) if total is not None and count is not None else None


def throughput(ports: dict[str, int], pids: dict[str, int], tmp: Path, redis_url: str) -> dict[str, Any]:
    """wrk against the bare baseline, the pipeline reference and the service: ``ports``/``pids`` by name."""
    targets = {name: (f"http://{HOST}:{port}/t", {name: pids[name], "redis": pids["redis"]})
               for name, port in ports.items()}
    service_port = ports["service"]
    smoke = http_status(targets["service"][0], timeout=2, headers=BEACON_HEADERS, data=orjson.dumps(
        {"vid": str(uuid.uuid4()), "sent_at": int(time.time() * 1000), "events": [_event(0, int(time.time() * 1000))]}))
    if smoke != 204:
        raise RuntimeError(f"POST /t to the service answered {smoke}, not 204; see {tmp / 'service.stderr'}")
    stored_before = _stored_bench_events(redis_url)
    batches_before = _batch_metrics(service_port)
    runs: dict[str, list[WrkResult]] = {name: [] for name in targets}
    service_2xx = 0

    def one(name: str, seconds: float, label: str) -> WrkResult:
        url, watch = targets[name]
        wait_quiet()
        r = run_wrk(label, url, LUA, threads=WRK_THREADS, connections=WRK_CONNECTIONS, duration_s=seconds,
                    script_args=[secrets.token_hex(4), str(BENCH_VISITORS)], watch=watch)
        say(f"   {label:<16} {r.rps:>9,.0f} req/s  p50 {_fmt_ms(r.p50_ms)}  p99 {_fmt_ms(r.p99_ms)}  "
             f"non-2xx {r.non_2xx}  cpu(cores) " + " ".join(f"{k}={v}" for k, v in r.cpu.items()))
        return r

    for name in targets:
        r = one(name, WARMUP_SECONDS, f"{name} warm-up")
        if name == "service":
            service_2xx += r.requests - r.non_2xx
    for i in (1, 2):
        for name in targets:
            r = one(name, RUN_SECONDS, f"{name} run {i}")
            runs[name].append(r)
            if name == "service":
                service_2xx += r.requests - r.non_2xx
    stored = _stored_bench_events(redis_url) - stored_before
    batches_after = _batch_metrics(service_port)
    commands_per_pipeline = None
    if batches_before and batches_after and batches_after[1] > batches_before[1]:
        commands_per_pipeline = round((batches_after[0] - batches_before[0])
                                      / (batches_after[1] - batches_before[1]), 1)
    best = {name: max(rs, key=lambda r: r.rps) for name, rs in runs.items()}
    ratio = best["service"].rps / best["bare"].rps if best["bare"].rps else float("nan")
    pipeline_ratio = best["pipeline"].rps / best["bare"].rps if "pipeline" in best and best["bare"].rps else None
    p99 = best["service"].p99_ms
    non_2xx = sum(r.non_2xx for r in runs["service"])
    socket_errors = sum(sum(r.socket_errors.values()) for rs in runs.values() for r in rs)

    def summary(r: WrkResult, who: str) -> dict[str, Any]:
        d = r.as_dict()
        d["cpu_us_per_request"] = round(r.cpu_s.get(who, 0) / r.requests * 1e6, 1) if r.requests else None
        d["redis_cpu_us_per_request"] = (round(r.cpu_s.get("redis", 0) / r.requests * 1e6, 1)
                                         if r.requests else None)
        return d

    bare_us = best["bare"].cpu_s.get("bare", 0) / best["bare"].requests if best["bare"].requests else 0
    service_us = best["service"].cpu_s.get("service", 0) / best["service"].requests \
        if best["service"].requests else 0
    return {
        # less sensitive to other load on the machine than req/s: CPU per request of the two servers
        "cpu_ratio": round(bare_us / service_us, 3) if service_us else None,
        "wrk": {"threads": WRK_THREADS, "connections": WRK_CONNECTIONS, "seconds": RUN_SECONDS,
                "warmup_seconds": WARMUP_SECONDS, "visitors": BENCH_VISITORS},
        **{name: summary(r, name) for name, r in best.items()},
        "pipeline_ratio": round(pipeline_ratio, 3) if pipeline_ratio is not None else None,
        "runs": {name: [summary(r, name) for r in rs] for name, rs in runs.items()},
        "ratio": round(ratio, 3), "target_ratio": TARGET_RATIO, "ratio_pass": ratio >= TARGET_RATIO,
        "p99_ms": p99, "target_p99_ms": TARGET_P99_MS, "p99_pass": p99 is not None and p99 < TARGET_P99_MS,
        "service_non_2xx": non_2xx, "socket_errors": socket_errors,
        "service_2xx_counted_by_wrk": service_2xx, "events_stored_by_these_runs": stored,
        "group_commit_commands_per_pipeline": commands_per_pipeline,
    }


# --- optional: where the service's time goes ---------------------------------------------------------------

def find_py_spy() -> str | None:
    candidate = VENV_BIN / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


# (label, test on (function, file) of any frame in a sample): inclusive shares of the service's time
CONCERNS: list[tuple[str, Any]] = [
    ("edge: read + parse (httptools callbacks)", lambda f, p: f.startswith("EdgeProtocol.data_received ")),
    ("edge: write the response (send)", lambda f, p: f.startswith("EdgeProtocol._write ")),
    ("  encode the response", lambda f, p: p.startswith("tracker/edge/wire")),
    ("beacon (Tracking.beacon)", lambda f, p: f.startswith("Tracking.beacon ")),
    ("  parse_batch (validation, orjson)", lambda f, p: f.startswith("parse_batch ")),
    ("  is_bot", lambda f, p: f.startswith("is_bot ") or p.startswith("crawlerdetect/")),
    ("  EventLog.append (caller side)", lambda f, p: f.startswith("EventLog.append ")),
    ("  CORS headers", lambda f, p: f.startswith("Tracking.cors ")),
    ("  metrics + sampled request line (account)", lambda f, p: f.startswith("Tracking.account ")),
    ("    request line (tracker.logs)", lambda f, p: p.startswith("tracker/logs")),
    ("aiohttp (handed-over connections; none in this benchmark)", lambda f, p: p.startswith("aiohttp/")),
    ("group-commit flush task", lambda f, p: p.startswith(("tracker/groupcommit", "tracker/resp"))),
    ("redis-py (pack, send, parse)", lambda f, p: p.startswith("redis/")),
    ("structlog", lambda f, p: p.startswith("structlog/")),
    ("stitcher worker (idle polling)", lambda f, p: p.startswith(("stitcher/worker", "stitcher/stitch"))),
    ("SQL (sqlalchemy, aiosqlite)", lambda f, p: p.startswith(("sqlalchemy/", "aiosqlite/"))),
]


def profile(service: Child, service_port: int, redis_child: Child, tmp: Path) -> dict[str, Any]:
    """One more loaded run of the service, sampled by py-spy (not one of the measured runs)."""
    py_spy = find_py_spy()
    if py_spy is None:
        return {"status": "skipped: py-spy is not installed (.venv/bin/pip install py-spy)"}
    out = tmp / "profile.txt"
    seconds = RUN_SECONDS - 2
    holder: list[subprocess.Popen[bytes]] = []

    def attach() -> None:
        time.sleep(1)
        with open(tmp / "py-spy.stderr", "wb") as err:
            holder.append(subprocess.Popen(
                # --gil: samples of the thread running Python (the event loop), so idle threads waiting on a
                # queue do not count; blocking mode (no --nonblocking) keeps every sampled stack whole
                [py_spy, "record", "--pid", str(service.pid), "--duration", str(seconds), "--rate", "200",
                 "--gil", "--format", "raw", "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True))

    try:
        wait_quiet()
        r = run_wrk("service (py-spy)", f"http://{HOST}:{service_port}/t", LUA, threads=WRK_THREADS,
                    connections=WRK_CONNECTIONS, duration_s=RUN_SECONDS, during=attach,
                    script_args=[secrets.token_hex(4), str(BENCH_VISITORS)],
                    watch={"service": service.pid, "redis": redis_child.pid})
        if holder:
            holder[0].wait(timeout=seconds + 15)
    finally:
        for proc in holder:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if not out.exists():
        err = (tmp / "py-spy.stderr").read_text(errors="replace").strip()
        return {"status": f"py-spy failed: {err[-300:]}", "requests": r.requests}
    us = r.cpu_s.get("service", 0) / r.requests * 1e6 if r.requests else 0
    return {"status": "ok", "requests": r.requests, "rps_while_sampled": r.rps,
            "cpu_us_per_request_while_sampled": round(us, 1), **_fold(out.read_text(errors="replace"))}


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _where(path: str) -> str:
    """A short name for the code a frame belongs to: its top-level package or module.

    py-spy names files relative to their sys.path entry (``aiohttp/web.py``, ``uuid.py``); absolute paths
    are cut after ``site-packages/`` or ``lib/pythonX.Y/``.
    """
    p = _short(path)
    return p.split("/", 1)[0].removesuffix(".py")


def _short(path: str) -> str:
    p = path.replace("\\", "/")
    for marker in ("site-packages/", "/lib/python"):
        if marker in p:
            p = p.split(marker, 1)[1]
            if marker == "/lib/python":
                p = p.split("/", 1)[-1]
    if p.startswith(str(ROOT) + "/"):
        p = p[len(str(ROOT)) + 1:]
    return p


def _fold(raw: str, top: int = 15) -> dict[str, Any]:
    """Shares of the sampled time from py-spy's raw (collapsed-stack) output: per concern (inclusive), per
    package (self), per function (self and inclusive)."""
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    concern: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame)
            if m is None or frame.startswith(("process ", "thread ")):
                continue
            frames.append((m.group("func"), _short(m.group("file"))))
        if not frames:
            continue
        total += count
        leaf_func, leaf_file = frames[-1]
        self_fn[f"{leaf_func} ({leaf_file})"] += count
        self_pkg[_where(leaf_file)] += count
        for name in {f"{f} ({p})" for f, p in frames}:
            incl_fn[name] += count
        for label, test in CONCERNS:
            if any(test(f + " ", p) for f, p in frames):
                concern[label] += count
    if not total:
        return {"samples": 0}

    def share(c: Counter[str], n: int | None = top) -> list[tuple[str, float]]:
        return [(name, round(100 * k / total, 1)) for name, k in c.most_common(n)]

    return {"samples": total,
            "by_concern_pct": [(label, round(100 * concern[label] / total, 1)) for label, _ in CONCERNS],
            "self_by_package_pct": share(self_pkg, 10), "self_by_function_pct": share(self_fn),
            "inclusive_by_function_pct": share(incl_fn, 25)}


# --- the report --------------------------------------------------------------------------------------------

def _fmt_ms(v: float | None) -> str:
    return "   n/a" if v is None else f"{v:5.2f} ms"


def _pf(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _log_stats(path: Path, requests: int) -> dict[str, Any]:
    if not path.exists():
        return {}
    size = path.stat().st_size
    with path.open("rb") as f:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    with path.open("rb") as f:
        sample = f.read(4096).splitlines()
    request_line = next((x.decode(errors="replace") for x in sample if b'"request"' in x), None)
    return {"file": str(path), "bytes": size, "lines": lines,
            "bytes_per_line": round(size / lines, 1) if lines else None,
            "lines_per_request": round(lines / requests, 2) if requests else None, "sample": request_line}


def report(results: dict[str, Any]) -> None:
    say()
    say("Tracker benchmark")
    say(f"  service runner: {results['service_runner']}")
    t = results.get("throughput")
    if isinstance(t, dict) and "bare" in t:
        w = t["wrk"]
        say(f"  POST /t, ~350-byte one-event beacon, wrk -t{w['threads']} -c{w['connections']} "
             f"-d{w['seconds']}s, better of 2 alternating runs after a {w['warmup_seconds']} s warm-up")
        say(f"  {'handler':<34}{'req/s':>9}{'p50':>10}{'p99':>10}{'non-2xx':>9}{'CPU µs/req':>12}"
             f"{'redis µs/req':>14}")
        for name, label in (("bare", "bare aiohttp + orjson, 204"),
                            ("pipeline", "bare + group-commit write"), ("service", "service POST /t (stores)")):
            if name not in t:
                continue
            r = t[name]
            say(f"  {label:<34}{r['rps']:>9,.0f}{_fmt_ms(r['p50_ms']):>10}{_fmt_ms(r['p99_ms']):>10}"
                 f"{r['non_2xx']:>9}{r['cpu_us_per_request'] or 0:>12.0f}{r['redis_cpu_us_per_request'] or 0:>14.0f}")
        say(f"  ratio service/bare: {t['ratio']:.2f} (target >= {TARGET_RATIO})  {_pf(t['ratio_pass'])}")
        if t.get("pipeline_ratio") is not None:
            say(f"  ratio pipeline/bare: {t['pipeline_ratio']:.2f} — group commit alone (the issue's \"coalescing "
                 "pipeline\" reference: parse, write through tracker.groupcommit, await, 204); the rest of the "
                 "service's cost is validation, idempotent append script, visitor cookie, CORS, log line, metrics")
        if t.get("cpu_ratio"):
            say(f"  CPU per request, bare/service: {t['cpu_ratio']:.2f} (the same ratio measured in CPU time, "
                 "less sensitive to other load on the machine)")
        say(f"  service p99 at {w['connections']} connections: {_fmt_ms(t['p99_ms']).strip()} "
             f"(target < {TARGET_P99_MS:g} ms)  {_pf(t['p99_pass'])}")
        if not t["p99_pass"] and t["service"]["rps"] and t["bare"]["rps"]:
            c = w["connections"]
            say(f"    note: wrk keeps {c} requests in flight, so mean latency = {c} / req/s (Little's law): "
                 f"{c / t['service']['rps'] * 1000:.1f} ms for the service, {c / t['bare']['rps'] * 1000:.1f} ms "
                 f"for bare; p99 < {TARGET_P99_MS:g} ms at {c} connections needs well over "
                 f"{c / TARGET_P99_MS * 1000:,.0f} req/s from the process")
        if t["service_non_2xx"] or t["socket_errors"]:
            say(f"  !! service non-2xx answers: {t['service_non_2xx']}; socket errors (all runs): "
                 f"{t['socket_errors']}")
        else:
            say("  service non-2xx answers: 0")
        if t.get("group_commit_commands_per_pipeline") is not None:
            say(f"  group commit: {t['group_commit_commands_per_pipeline']} Redis commands per pipeline on average "
                 "(service /metrics)")
        say(f"  events stored by the service runs: {t['events_stored_by_these_runs']:,} "
             f"(2xx counted by wrk: {t['service_2xx_counted_by_wrk']:,}; wrk does not count the last "
             "in-flight requests)")
        say("  caveat: wrk runs on the same 2 cores (it used "
             f"{t['service']['cpu'].get('wrk', 0):.2f} cores in the best service run, "
             f"{t['bare']['cpu'].get('wrk', 0):.2f} in the best bare run), and so does redis-server; "
             "each Python server is one process, so it can use at most 1 core.")
        others = max(r["cpu"].get("others", 0) for rs in t["runs"].values() for r in rs)
        if others > 0.25:
            say(f"  !! other processes on this machine used up to {others:.2f} cores during the runs: "
                 "req/s and latency are noisy; compare the CPU µs/req columns")
    elif isinstance(t, dict):
        say(f"  throughput: {t.get('status')} ({t.get('hint', '')})")
    logs = results.get("service_log")
    if logs:
        say(f"  service stderr (JSON request log): {logs['lines']:,} lines, {logs['bytes_per_line']} "
             f"bytes/line, {logs['lines_per_request']} lines per request")
    m = results.get("redis_memory")
    if isinstance(m, dict) and "bytes_per_event" in m:
        say(f"  Redis {m['redis_version']} memory: {m['events_stored']:,} events stored ({MEM_VISITORS} visitors x "
             f"{MEM_EVENTS_PER_VISITOR}); {m['bytes_per_event']:.0f} bytes/event vs "
             f"{m['event_json_bytes']:.0f} bytes of the event's compact JSON = {m['ratio']:.2f}x "
             f"(target <= {TARGET_MEM_RATIO}x)  {_pf(m['pass'])}")
        say("    by key kind (bytes/event): " + ", ".join(
            f"{k} {v:.0f}" for k, v in m["bytes_per_event_by_key_kind"].items())
             + f"; the stored JSON itself is {m['stored_json_bytes']:.0f} bytes (adds rt and t); "
             f"INFO used_memory delta {m['used_memory_delta_per_event']} bytes/event")
        if m["events_stored"] != m["events_sent"] or set(m["statuses"]) != {"204"}:
            say(f"  !! statuses {m['statuses']}, stored {m['events_stored']} of {m['events_sent']}")
    elif m is not None:
        say(f"  Redis memory: {m}")
    s = results["script"]
    if s.get("status") == "ok":
        say(f"  static/t.js: {s['source_bytes']:,} bytes source, {s['minified_bytes']:,} minified, "
             f"{s['gzipped_bytes']:,} gzipped (target <= {TARGET_GZIP_BYTES:,})  {_pf(s['pass'])}")
    else:
        say(f"  static/t.js: {s.get('status')}")
    p = results.get("profile")
    if isinstance(p, dict) and p.get("status") == "ok" and p.get("samples"):
        us = p["cpu_us_per_request_while_sampled"]
        say(f"  py-spy profile of the service under load ({p['samples']} samples of the thread holding the GIL, "
             f"{p['rps_while_sampled']:,.0f} req/s, {us:.0f} CPU µs/req while sampled; µs below = share x that):")
        say("    share of the service's time by concern (inclusive; nested lines are part of the one above):")
        for label, pct in p["by_concern_pct"]:
            say(f"      {pct:5.1f}%  ~{pct * us / 100:4.0f} µs/req  {label}")
        say("    self time by package: " + ", ".join(f"{name} {pct}%" for name, pct in p["self_by_package_pct"]))
        say("    self time by function:")
        for name, pct in p["self_by_function_pct"]:
            say(f"      {pct:5.1f}%  {name}")
    elif p is not None:
        say(f"  profile: {p.get('status')}")


def main() -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {"script": script_size(), "service_runner": "not started"}
    tmp = Path(tempfile.mkdtemp(prefix="stitcher-bench-"))
    keep = os.environ.get("BENCH_KEEP_TMP") == "1"
    try:
        with Children() as children:
            say("   starting redis-server and the service ...")
            redis_child, redis_url = start_redis(children, tmp)
            service, service_port, runner = start_service(children, tmp, redis_url)
            results["service_runner"] = runner
            say(f"   service: {runner} on port {service_port} (pid {service.pid}); redis {redis_url}")
            say(f"   storing {MEM_VISITORS * MEM_EVENTS_PER_VISITOR:,} events through POST /t for the "
                 "memory figure ...")
            results["redis_memory"] = redis_memory(service_port, redis_url)
            if find_wrk() is None:
                say(f"   !! {WRK_INSTALL_HINT}; skipping the throughput part")
                results["throughput"] = {"status": "skipped: wrk not installed", "hint": WRK_INSTALL_HINT}
            else:
                bare, bare_port = start_bare(children, tmp)
                pipeline, pipeline_port = start_bare(children, tmp, pipeline_redis_url=redis_url)
                say(f"   bare baseline on port {bare_port} (pid {bare.pid}), pipeline reference on port "
                     f"{pipeline_port} (pid {pipeline.pid}); wrk runs:")
                results["throughput"] = throughput(
                    {"bare": bare_port, "pipeline": pipeline_port, "service": service_port},
                    {"bare": bare.pid, "pipeline": pipeline.pid, "service": service.pid, "redis": redis_child.pid},
                    tmp, redis_url)
                if os.environ.get("BENCH_PROFILE", "") not in ("", "0"):
                    say("   profiling the service under load with py-spy ...")
                    results["profile"] = profile(service, service_port, redis_child, tmp)
            t = results.get("throughput", {})
            requests = (t.get("service_2xx_counted_by_wrk", 0) if isinstance(t, dict) else 0) \
                + results["redis_memory"]["requests"] + results.get("profile", {}).get("requests", 0)
            results["service_log"] = _log_stats(tmp / "service.stderr", requests)
            if not service.alive():
                raise RuntimeError(f"the service died during the benchmark:\n{service.tail()}")
    finally:
        if keep:
            say(f"   kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    report(results)
    return results


if __name__ == "__main__":
    main()
