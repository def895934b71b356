"""Beacon throughput of ``stitcher serve`` with 1 and with 2 processes (``--workers N``, one port).

A private redis-server and a PostgreSQL database of this run (``--workers`` needs PostgreSQL; the beacon
path itself never touches SQL), then for N = 1 and N = 2: ``stitcher serve --workers N``, wrk
(``WRK_THREADS`` threads, ``WRK_CONNECTIONS`` connections) against ``POST /t`` with the tracker benchmark's
beacon (``bench/beacon.lua``: every request a new event), a warm-up and two runs, the better one kept. The CPU
of all the service's processes is summed. On this 2-core machine wrk and Redis share the cores with the
service, so 2 processes cannot double the figure: the report says how many cores each side used.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import (
    HOST,
    VENV_BIN,
    WRK_INSTALL_HINT,
    Child,
    Children,
    WrkResult,
    find_wrk,
    free_port,
    run_wrk,
    say,
    wait_http,
    wait_quiet,
)

WRK_THREADS, WRK_CONNECTIONS = 2, 64
RUN_SECONDS = float(os.environ.get("BENCH_WORKERS_SECONDS", "10"))
WARMUP_SECONDS = 2
PROCESSES = (1, 2)


def service_pids(parent: int) -> list[int]:
    """The service processes of a ``stitcher serve`` (the parent; with ``--workers N`` its N children)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == parent and b"--child" in (entry / "cmdline").read_bytes():
                    children.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return children or [parent]


def start_workers(children: Children, tmp: Path, n: int, env: dict[str, str], label: str = "") -> tuple[Child, int]:
    """``stitcher serve --workers n`` on a free port, once every process answers."""
    port = free_port()
    child = children.start(f"stitcher serve --workers {n}", [
        str(VENV_BIN / "stitcher"), "serve", "--port", str(port), "--workers", str(n)],
        env=env, log=tmp / f"workers-{n}{label}.log")
    failure = wait_http(child, f"http://{HOST}:{port}/healthz", timeout=60)
    deadline = time.monotonic() + 60
    while failure is None and len(service_pids(child.pid)) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    if failure is not None or len(service_pids(child.pid)) < n:
        children.stop(child)
        raise RuntimeError(failure or f"{n} processes did not start:\n{child.tail()}")
    return child, port


def service_env(tmp: Path, redis_url: str, db_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("PORT", "API_KEYS", "WORKER_ENABLED", "HISTORY_CAP", "ANON_TTL_DAYS", "ANON_TTL_SECONDS",
                 "MAX_BODY_BYTES", "MAX_EVENTS", "STITCH_PAUSE_MS", "ALLOWED_ORIGINS", "SMTP_URL", "SMS_WEBHOOK_URL"):
        env.pop(name, None)  # the defaults, whatever the shell has
    env.update(REDIS_URL=redis_url, DATABASE_URL=db_url, LOG_JSON="1", VAR_DIR=str(tmp), HOST=HOST, **extra)
    return env


def measure(service: Child, port: int, n: int, redis_pid: int) -> dict[str, Any]:
    from bench.tracker import BENCH_VISITORS, LUA

    pids = service_pids(service.pid)
    watch = {f"service{i}": pid for i, pid in enumerate(pids)} | {"redis": redis_pid}
    url = f"http://{HOST}:{port}/t"

    def one(seconds: float, label: str) -> WrkResult:
        wait_quiet()
        r = run_wrk(label, url, LUA, threads=WRK_THREADS, connections=WRK_CONNECTIONS, duration_s=seconds,
                    script_args=[secrets.token_hex(4), str(BENCH_VISITORS)], watch=watch)
        service_cores = sum(v for k, v in r.cpu.items() if k.startswith("service"))
        say(f"   {label:<22} {r.rps:>9,.0f} req/s  p50 {r.p50_ms or 0:.2f} ms  p99 {r.p99_ms or 0:.2f} ms  "
            f"non-2xx {r.non_2xx}  cores: service {service_cores:.2f} redis {r.cpu.get('redis', 0):.2f} "
            f"wrk {r.cpu.get('wrk', 0):.2f} others {r.cpu.get('others', 0):.2f}")
        return r

    one(WARMUP_SECONDS, f"{n} process(es) warm-up")
    runs = [one(RUN_SECONDS, f"{n} process(es) run {i}") for i in (1, 2)]
    best = max(runs, key=lambda r: r.rps)
    service_s = sum(v for k, v in best.cpu_s.items() if k.startswith("service"))
    return {
        "processes": n, "pids": pids, "rps": round(best.rps), "p50_ms": best.p50_ms, "p99_ms": best.p99_ms,
        "non_2xx": sum(r.non_2xx for r in runs), "socket_errors": sum(sum(r.socket_errors.values()) for r in runs),
        "service_cores": round(service_s / best.seconds, 2) if best.seconds else None,
        "cpu_us_per_request": round(service_s / best.requests * 1e6, 1) if best.requests else None,
        "cores": best.cpu, "runs_rps": [round(r.rps) for r in runs],
    }


def report(results: dict[str, Any]) -> None:
    say()
    say("Beacon throughput by number of processes (`stitcher serve --workers N`, one port)")
    say(f"  POST /t, wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{RUN_SECONDS:g}s, better of 2 runs after a "
        f"{WARMUP_SECONDS} s warm-up; PostgreSQL, private Redis")
    say(f"  {'processes':<10}{'req/s':>9}{'p50':>10}{'p99':>10}{'non-2xx':>9}{'service cores':>15}"
        f"{'CPU µs/req':>12}{'wrk cores':>11}{'redis cores':>13}{'others':>8}")
    for n in PROCESSES:
        r = results.get(str(n))
        if not r:
            continue
        say(f"  {n:<10}{r['rps']:>9,}{r['p50_ms'] or 0:>8.2f}ms{r['p99_ms'] or 0:>8.2f}ms{r['non_2xx']:>9}"
            f"{r['service_cores'] or 0:>15.2f}{r['cpu_us_per_request'] or 0:>12.0f}{r['cores'].get('wrk', 0):>11.2f}"
            f"{r['cores'].get('redis', 0):>13.2f}{r['cores'].get('others', 0):>8.2f}")
    if results.get("scaling") is not None:
        say(f"  2 processes / 1 process: {results['scaling']:.2f}x req/s (a 2-core machine that also runs wrk and "
            "Redis: the second process can only take what they leave)")


@contextmanager
def redis_and_postgres(prefix: str) -> Iterator[tuple[Children, Path, Child, str, str]]:
    """A private redis-server and a PostgreSQL database of this run (dropped after), with the children's
    keeper and a temporary directory: (children, tmp, the redis child, its URL, the database URL)."""
    from bench.stitch import drop_database, prepare_database
    from bench.tracker import start_redis

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        with Children() as children:
            redis_child, redis_url = start_redis(children, tmp)
            db_url, created = prepare_database("postgresql", tmp)
            try:
                yield children, tmp, redis_child, redis_url, db_url
            finally:
                drop_database(db_url, created)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> dict[str, Any]:
    results: dict[str, Any] = {}
    if find_wrk() is None:
        say(f"   !! {WRK_INSTALL_HINT}; skipped")
        return {"status": "skipped: wrk not installed"}
    with redis_and_postgres("stitcher-bench-workers-") as (children, tmp, redis_child, redis_url, db_url):
        env = service_env(tmp, redis_url, db_url)
        for n in PROCESSES:
            service, port = start_workers(children, tmp, n, env)
            say(f"   stitcher serve --workers {n} on port {port}: pids {service_pids(service.pid)}")
            try:
                results[str(n)] = measure(service, port, n, redis_child.pid)
            finally:
                children.stop(service, timeout=90)
    if "1" in results and "2" in results and results["1"]["rps"]:
        results["scaling"] = round(results["2"]["rps"] / results["1"]["rps"], 2)
    report(results)
    return results


if __name__ == "__main__":
    main()
