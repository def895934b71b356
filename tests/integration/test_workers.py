"""``stitcher serve --workers N`` with real processes: N children answer on one port, the sweeper is elected
(one holder of its Redis lease, taken over when the holder dies), a crashed child is replaced, a message is
sent once by two processes, SIGTERM stops everything gracefully, and SQLite is refused.

Several processes need PostgreSQL: on the SQLite run only the refusal is tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from redis.asyncio import Redis

from tests.conftest import API_KEY, reserved_port
from tests.helpers import call, eventually, sms_webhook
from tracker import keys

pytestmark = pytest.mark.slow
STITCHER = Path(sys.executable).with_name("stitcher")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 90.0
VID = "0b6e1d2a-4c3f-4e5a-9b8c-7d6e5f4a3b2c"
SERVICE_SETTINGS = ("REDIS_URL", "DATABASE_URL", "API_KEYS", "HOST", "PORT", "VAR_DIR", "WORKER_ENABLED",
                    "SMTP_URL", "SMS_WEBHOOK_URL", "LOG_JSON")


@contextlib.contextmanager
def held_port() -> Iterator[int]:
    """A port held for the test (``reserved_port``), or, with ``TEST_PORTS=LOW-HIGH``, one of that range (a
    shared machine where each runner has its own ports)."""
    span = os.environ.get("TEST_PORTS")
    if not span:
        with reserved_port() as port:
            yield port
        return
    low, high = (int(p) for p in span.split("-"))
    for port in range(low, high + 1):
        with socket.socket() as probe:  # without SO_REUSEPORT: fails if anything holds the port
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            yield port
            return
    raise RuntimeError(f"no free port in TEST_PORTS={span}")


def _postgres(database_url: str) -> str:
    if not database_url.startswith("postgresql"):
        pytest.skip("serve --workers N > 1 needs PostgreSQL (it refuses SQLite: see test_sqlite_is_refused)")
    return database_url


def _env(database_url: str, var_dir: Path, redis_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_SETTINGS and not k.startswith("TEST_")}
    env.update(DATABASE_URL=database_url, API_KEYS=API_KEY, LOG_JSON="1", VAR_DIR=str(var_dir),
               HOST="127.0.0.1", **extra)
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return env


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _children(parent: int) -> set[int]:
    """The live child processes of ``parent`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) == parent and stat[0] != "Z":
                found.add(int(entry.name))
    return found


class Workers:
    """A real ``stitcher serve --workers N`` (its own session; its output in a file)."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path, workers: int = 2) -> None:
        self.env, self.port, self.log_path, self.workers = env, port, log_path, workers
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([str(STITCHER), "serve", "--port", str(self.port), "--workers",
                                          str(self.workers)], env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, start_new_session=True)

    @property
    def children(self) -> set[int]:
        """The service processes (not the embedded redis-server)."""
        assert self.proc is not None
        return {pid for pid in _children(self.proc.pid) if b"--child" in _cmdline(pid)}

    async def pids_answering(self, connections: int = 60) -> Counter[int]:
        """The pids that answered ``/healthz`` over ``connections`` new connections (failures are skipped)."""
        seen: Counter[int] = Counter()
        for _ in range(connections):
            # a new connection each time: the kernel picks a process per connection
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{self.url}/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            seen[int((await r.json())["pid"])] += 1
        return seen

    async def all_answering(self) -> set[int]:
        """Wait (bounded) until every child answers on the port; their pids."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                break
            children = self.children
            if len(children) == self.workers and children <= set(await self.pids_answering(20)):
                return children
            await asyncio.sleep(0.2)
        raise AssertionError(f"not every process answered:\n{self.log()}")

    def log(self, tail: int = 4000) -> str:
        """The end of the parent's and children's output (``tail=0``: all of it)."""
        return self.log_path.read_text(errors="replace")[-tail:]

    async def terminate(self) -> int:
        """SIGTERM to the parent alone; its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, STOP_TIMEOUT_S)

    def kill(self) -> None:
        """SIGKILL the parent and its children (the tests' last resort)."""
        if self.proc is None:
            return
        for pid in (*_children(self.proc.pid), self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)


@contextlib.asynccontextmanager
async def workers(env: dict[str, str], log_path: Path, n: int = 2) -> AsyncIterator[Workers]:
    with held_port() as port:
        service = Workers(env, port, log_path, n)
        service.start()
        try:
            yield service
        finally:
            service.kill()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A VAR_DIR short enough for the embedded Redis's unix socket (no TCP port of its own)."""
    directory = Path(tempfile.mkdtemp(prefix="st-wk-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_sqlite_is_refused(tmp_path: Path) -> None:
    """`serve --workers 2` on SQLite exits 2 naming PostgreSQL, before starting anything: SQLite's writers are
    kept apart by a lock inside one process."""
    with held_port() as port:
        env = _env(f"sqlite+aiosqlite:///{tmp_path / 's.db'}", tmp_path, None)
        proc = subprocess.run([str(STITCHER), "serve", "--port", str(port), "--workers", "2"], env=env,
                              capture_output=True, timeout=60)
    assert proc.returncode == 2, proc.stderr.decode()
    assert b"--workers needs PostgreSQL" in proc.stderr
    assert not (tmp_path / "redis").exists()  # no embedded Redis was started


async def test_two_processes_answer_on_one_port_and_sigterm_stops_them(database_url: str, short_dir: Path) -> None:
    """With the embedded Redis (REDIS_URL unset): the parent starts one redis-server, both children answer on
    the one port (distinct pids over many connections), a linked visitor's beacons reach the contact through
    either process, and SIGTERM to the parent stops the children and the Redis, exit 0."""
    env = _env(_postgres(database_url), short_dir, None)
    async with workers(env, short_dir / "serve.log") as service:
        children = await service.all_answering()
        assert len(children) == 2
        seen = await service.pids_answering(100)
        assert set(seen) == children, seen  # both answer; nothing else does
        async with aiohttp.ClientSession(base_url=service.url) as http:
            code, answer = await call(http, "POST", "/api/v1/contact/subscribe", {
                "contact": {"externalCustomerId": "C-wk-1", "visitorIds": [VID]}})
            assert code == 200, answer
            for i in range(20):  # new connections: they land on both processes
                now = int(time.time() * 1000)
                body = orjson.dumps({"vid": VID, "sent_at": now,
                                     "events": [{"id": f"wk-{i}", "type": "page_view", "ts": now}]})
                async with aiohttp.ClientSession() as fresh, fresh.post(
                        f"{service.url}/t", data=body, headers={"Content-Type": "text/plain"}) as r:
                    assert r.status == 204, await r.text()

            async def timeline() -> int:
                _, page = await call(http, "GET", f"/api/v1/contact/{answer['id']}/events?limit=1000")
                return sum(1 for e in page.get("events", []) if str(e.get("id", "")).startswith("wk-"))

            assert await eventually(timeline, lambda n: n == 20, 30) == 20
        redis_pids = {p for p in _children(service.proc.pid) if p not in children}  # type: ignore[union-attr]
        assert len(redis_pids) == 1  # one embedded redis-server for both
        assert await service.terminate() == 0, service.log()
        assert not any(map(_alive, children | redis_pids))  # each stopped and reaped by its parent
        assert '"worker process died' not in service.log(tail=0)


async def test_the_sweeper_is_elected_and_taken_over_when_its_holder_dies(database_url: str, clean_redis: str,
                                                                           short_dir: Path) -> None:
    """One child holds the sweeper's lease; SIGKILLed, it is replaced by a new child and the lease passes to a
    live one; SIGTERM to the parent releases it (exit 0)."""
    env = _env(_postgres(database_url), short_dir, clean_redis)
    redis = Redis.from_url(clean_redis)
    try:
        async with workers(env, short_dir / "serve.log") as service:
            children = await service.all_answering()

            async def holder() -> int | None:
                owner = await redis.get(keys.lease("sweeper"))
                return int(owner.decode().split("-")[-2]) if owner else None

            first = await eventually(holder, lambda pid: pid in children, 30)
            assert first in children
            os.kill(first, signal.SIGKILL)
            replaced = await eventually(lambda: service.all_answering(), lambda pids: first not in pids, 60)
            assert first not in replaced and len(replaced) == 2
            # the dead holder's lease runs out (15 s) and a live process takes it
            second = await eventually(holder, lambda pid: pid is not None and pid != first, 60)
            assert second in service.children
            assert "worker process died; starting another" in service.log(tail=0)
            assert await service.terminate() == 0, service.log()
            assert await redis.get(keys.lease("sweeper")) is None  # released on the way out
    finally:
        await redis.aclose()


@contextlib.asynccontextmanager
async def sms_receiver() -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
    """An SMS webhook in this test's loop, on a held port."""
    got: list[dict[str, Any]] = []
    runner = web.AppRunner(sms_webhook(got))
    await runner.setup()
    with held_port() as port:
        await web.TCPSite(runner, "127.0.0.1", port, reuse_port=True).start()
        try:
            yield got, f"http://127.0.0.1:{port}/sms"
        finally:
            await runner.cleanup()


async def test_two_processes_send_each_message_once(database_url: str, clean_redis: str, short_dir: Path) -> None:
    """Both processes deliver (spread: each round claims rows the other skips), and each of 40 SMS reaches the
    webhook exactly once."""
    async with sms_receiver() as (got, url):
        env = _env(_postgres(database_url), short_dir, clean_redis, SMS_WEBHOOK_URL=url)
        async with workers(env, short_dir / "serve.log") as service:
            await service.all_answering()
            phones = [f"+38067{1000000 + i}" for i in range(40)]
            async with aiohttp.ClientSession(base_url=service.url) as http:
                for phone in phones:
                    code, answer = await call(http, "POST", "/api/v1/contact",
                                              {"channels": [{"type": "sms", "value": phone}]})
                    assert code == 200, answer
                code, created = await call(http, "POST", "/api/v1/messages",
                                           {"channel": "sms", "name": "n", "body": "Hello"})
                assert code == 200, created
                for start in range(0, 40, 10):  # several sends, through whichever process takes each
                    code, sent = await call(http, "POST", f"/api/v1/message/{created['id']}/smartsend",
                                            {"recipients": [{"locator": p} for p in phones[start:start + 10]]})
                    assert code == 200 and all(r["status"] == "OK" for r in sent["results"]), sent

                async def outbox() -> list[str]:
                    _, page = await call(http, "GET", f"/api/v1/message/{created['id']}/outbox?limit=1000")
                    return [o["state"] for o in page["outbox"]]

                states = await eventually(outbox, lambda s: s.count("sent") == 40, 60)
                assert states.count("sent") == 40, Counter(states)
            await asyncio.sleep(1.0)  # a second delivery of any row would have been posted by now
            assert Counter(g["to"] for g in got) == Counter(phones)
            assert len({g["requestId"] for g in got}) == 40
            assert await service.terminate() == 0, service.log()


def test_a_crash_loop_stops_the_parent_with_status_1() -> None:
    """Children that keep dying (a broken configuration) are not restarted forever: the parent exits 1."""
    code = (
        "import os, sys; from stitcher.supervisor import Supervisor; "
        "sys.exit(Supervisor([sys.executable, '-c', 'import sys; sys.exit(3)'], dict(os.environ), 2).run())"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=90,
                          env={**os.environ, "LOG_JSON": "1"})
    assert proc.returncode == 1, proc.stderr.decode()
    assert b"worker processes keep dying" in proc.stdout + proc.stderr
