"""Instructions per beacon, counted by callgrind: the tracker benchmark's ratio without the machine's noise.

wrk's requests/s move with whatever else the 2 cores run; the instructions a server process executes per
request do not (within ~1 %). This runs the bare aiohttp handler (``bench.bare``) and ``stitcher serve``
(worker off) each under ``valgrind --tool=callgrind`` with instrumentation off, warms each up, switches
instrumentation on (``callgrind_control -i on``) for ``REQUESTS`` beacons sent over 64 keep-alive
connections as ``bench/beacon.lua`` sends them, and divides. User-space instructions only: the kernel's
share of each request (its read and write system calls, the same for both) is not in them. Needs valgrind
(``apt-get install valgrind``); skipped without it. ``BENCH_CALLGRIND_DIR=<dir>`` keeps the callgrind files
there, for ``callgrind_annotate <dir>/service.callgrind.1`` (where the instructions go, by C function).
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import HOST, VENV_BIN, Children, free_port, say, with_bench_limits
from bench.tracker import BEACON_HEADERS, BENCH_VISITORS, start_redis

REQUESTS, WARMUP, CONNECTIONS = 3000, 500, 64


def _beacon(port: int, nonce: str, i: int) -> bytes:
    now = int(time.time() * 1000)
    vid = f"5e1f0b7a-0c2d-4e3f-8a4b-{i % BENCH_VISITORS:012x}"
    body = (f'{{"vid":"{vid}","sent_at":{now},"events":[{{"id":"{nonce}-{i:012x}","type":"page_view",'
            f'"ts":{now - 120},"url":"https://shop.example.com/products/blue-shoes?utm_source=newsletter",'
            f'"ref":"https://www.google.com/","title":"Blue shoes \u2013 Example Shop",'
            f'"props":{{"category":"shoes","price":59.9}}}}]}}').encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in BEACON_HEADERS.items())
    return f"POST /t HTTP/1.1\r\nHost: {HOST}:{port}\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


async def _send(port: int, n: int) -> collections.Counter[int]:
    """``n`` beacons over ``CONNECTIONS`` keep-alive connections, each waiting for its answer."""
    statuses: collections.Counter[int] = collections.Counter()
    nonce = os.urandom(4).hex()

    async def connection(ids: range) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        for i in ids:
            writer.write(_beacon(port, nonce, i))
            head = await reader.readuntil(b"\r\n\r\n")
            statuses[int(head[9:12])] += 1
            match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if match:
                await reader.readexactly(int(match.group(1)))
        writer.close()

    await asyncio.gather(*(connection(range(k, n, CONNECTIONS)) for k in range(CONNECTIONS)))
    return statuses


def _count(children: Children, name: str, args: list[str], env: dict[str, str], tmp: Path) -> dict[str, Any]:
    port = free_port()
    out = tmp / f"{name}.callgrind"
    child = children.start(name, ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                  f"--callgrind-out-file={out}", *args, "--port", str(port)],
                           env=env, log=tmp / f"{name}.log")
    deadline = time.monotonic() + 180
    while True:
        try:
            asyncio.run(_send(port, 1))
            break
        except OSError:
            if not child.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start under valgrind; see {tmp / (name + '.log')}") from None
            time.sleep(1)
    asyncio.run(_send(port, WARMUP))
    control = shutil.which("callgrind_control") or "callgrind_control"
    subprocess.run([control, "-i", "on", str(child.pid)], check=True, capture_output=True)
    statuses = asyncio.run(_send(port, REQUESTS))
    subprocess.run([control, "-i", "off", str(child.pid)], check=True, capture_output=True)
    subprocess.run([control, "-d", str(child.pid)], check=True, capture_output=True)
    children.stop(child, timeout=30)
    keep = os.environ.get("BENCH_CALLGRIND_DIR")
    if keep:
        for part in tmp.glob(f"{name}.callgrind*"):
            shutil.copy(part, Path(keep) / part.name)
    total = 0
    for part in tmp.glob(f"{name}.callgrind*"):
        for line in part.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):  # a dump's own count ("summary:" is what came before it)
                total += int(line.split()[1])
    return {"requests": REQUESTS, "statuses": dict(statuses), "instructions": total,
            "per_request": round(total / REQUESTS)}


def main() -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        say("   valgrind is not installed (apt-get install valgrind): skipped")
        return {"status": "skipped: valgrind is not installed"}
    with tempfile.TemporaryDirectory(prefix="bench-instr-") as tmp_name, Children() as children:
        tmp = Path(tmp_name)
        _, redis_url = start_redis(children, tmp)
        python = str(VENV_BIN / "python")
        # no HOST in the environment: valgrind's vgdb names its pipes after $HOST, and callgrind_control
        # (run with this process's environment) would not find them
        base = {k: v for k, v in os.environ.items() if k not in ("PORT", "API_KEYS", "HISTORY_CAP", "HOST")}
        say(f"   {REQUESTS:,} beacons over {CONNECTIONS} connections to each server under callgrind ...")
        bare = _count(children, "bare", [python, "-m", "bench.bare"], base, tmp)
        service_env = {**base, "REDIS_URL": redis_url, "DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'i.db'}",
                       "VAR_DIR": str(tmp), "WORKER_ENABLED": "0", "IMPORT_PARSE_WORKERS": "0", "LOG_JSON": "1"}
        service_env = with_bench_limits(service_env)
        service = _count(children, "service", [python, str(VENV_BIN / "stitcher"), "serve", "--host", HOST],
                         service_env, tmp)
    ratio = bare["per_request"] / service["per_request"]
    say("")
    say("Instructions per beacon (callgrind, user space, server process)")
    say(f"  bare aiohttp + orjson, 204   {bare['per_request']:>9,}")
    say(f"  stitcher serve, POST /t      {service['per_request']:>9,}   (statuses {service['statuses']})")
    say(f"  ratio bare/service: {ratio:.2f} (the throughput ratio these instructions alone would give)")
    return {"status": "ok", "bare": bare, "service": service, "ratio_bare_over_service": round(ratio, 3)}
