"""PostgreSQL restarted under a real ``stitcher serve``: during subscribes and during a bulk import.

The test runs a PostgreSQL server of its own (``initdb``/``pg_ctl`` from the machine's PostgreSQL; skipped
when they are missing) on a unix socket in a fresh directory, so stopping it touches nothing else on the
machine; the service runs as a subprocess with this server as its DATABASE_URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import auth
from tests.helpers import eventually, sql_scalar
from tests.integration.test_crash import service, service_env
from tests.integration.test_import_crash import assert_rows_whole

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # each takes 10-40 s; generous on a loaded machine
PG_PORT = 15501  # names the server's socket file only: it listens on no TCP port
TIMEOUT = aiohttp.ClientTimeout(total=20)


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl are: ``pg_config --bindir``, else the newest /usr/lib/postgresql/*/bin."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout
            candidates.append(Path(out.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((c for c in candidates if (c / "initdb").exists() and (c / "pg_ctl").exists()), None)


class OwnPostgres:
    """A throw-away PostgreSQL cluster (trust auth, fsync off) on a unix socket in ``directory``.

    PostgreSQL refuses to run as root: as root, its commands run as the ``postgres`` user.
    """

    def __init__(self, bindir: Path, directory: Path) -> None:
        self.bindir = bindir
        self.directory = directory
        self.data = directory / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(directory, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.as_user, str(self.bindir / tool), *args], capture_output=True, text=True,
                              timeout=120)
        if done.returncode:
            log = self.directory / "postgres.log"
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {done.stderr}\n"
                               f"{log.read_text()[-2000:] if log.exists() else ''}")

    def init(self, database: str) -> str:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        self.start()
        self._run("createdb", "-h", str(self.directory), "-p", str(PG_PORT), "-U", "postgres", database)
        return f"postgresql+asyncpg://postgres@/{database}?host={self.directory}&port={PG_PORT}"

    def start(self) -> None:
        options = f"-p {PG_PORT} -k {self.directory} -c listen_addresses='' -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.directory / "postgres.log"), "-o", options,
                  "-w", "-t", "60", "start")

    def stop(self) -> None:
        """A fast shutdown: open transactions are rolled back and every connection is closed by the server."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def stop_if_running(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop")


@pytest.fixture
def own_postgres() -> Iterator[tuple[OwnPostgres, str]]:
    if os.environ.get("CI_LABEL") == "embedded":
        pytest.skip("runs once, in CI's PostgreSQL pass: it starts a PostgreSQL of its own in either")
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("no initdb/pg_ctl (pg_config --bindir, /usr/lib/postgresql/*/bin): apt-get install postgresql")
    if os.geteuid() == 0 and not shutil.which("runuser"):
        pytest.skip("running as root without runuser: PostgreSQL cannot be started as root")
    try:
        pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    except KeyError:
        pytest.skip("running as root and no postgres user to run PostgreSQL as")
    directory = Path(tempfile.mkdtemp(prefix="st-pg-", dir="/tmp"))
    server = OwnPostgres(bindir, directory)
    try:
        yield server, server.init("faults")
    finally:
        server.stop_if_running()
        shutil.rmtree(directory, ignore_errors=True)


class Calls:
    """Every status the service answered, and the JSON 503s checked as they come."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()

    async def post(self, http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST until a 200, retrying a 503 or a connection error with the same body."""
        for attempt in range(600):
            try:
                async with http.post(url, json=body, headers=auth()) as r:
                    self.statuses[r.status] += 1
                    answer = await r.json(content_type=None)
                    if r.status == 200:
                        return dict(answer)
                    assert r.status == 503, answer
                    assert r.content_type == "application/json" and "Retry-After" in r.headers, answer
                    assert answer["status"] == 503, answer
            except (aiohttp.ClientConnectionError, TimeoutError):
                self.statuses[0] += 1
            await asyncio.sleep(min(0.05 * 2**attempt, 0.5))
        raise AssertionError(f"never answered 200: {url}")


async def test_postgres_restarted_during_subscribes(own_postgres, clean_redis, tmp_path):
    """8 clients subscribe people without pause while PostgreSQL stops for a moment and starts again: every
    answer is a 200 or a JSON 503 (never a 500), the same service answers 200 again afterwards, and each
    person exists once and whole — contact, email and group together, or nothing."""
    pg, database_url = own_postgres
    env = service_env(clean_redis, database_url, tmp_path)
    calls = Calls()
    done: list[str] = []
    stop = asyncio.Event()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http, service(env, tmp_path / "serve.log") as server:

        async def subscriber(k: int) -> None:
            n = 0
            while not stop.is_set():
                ext = f"P{k}-{n}"
                answer = await calls.post(http, f"{server.url}/api/v1/contact/subscribe", {"contact": {
                    "externalCustomerId": ext, "channels": [{"type": "email", "value": f"{ext.lower()}@example.com"}]},
                    "groups": ["pg-restart"]})
                assert answer["status"] == "created", answer
                done.append(ext)
                n += 1

        clients = [asyncio.create_task(subscriber(k)) for k in range(8)]
        try:
            await eventually(lambda: _len(done), lambda n: n >= 40, 30)
            await asyncio.to_thread(pg.stop)
            with contextlib.suppress(AssertionError):
                await eventually(lambda: _n(calls.statuses, 503), lambda n: n >= 8, 10)
            await asyncio.to_thread(pg.start)
            before = len(done)
            await eventually(lambda: _len(done), lambda n: n >= before + 40, 60)
        finally:
            stop.set()
            results = await asyncio.gather(*clients, return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)], results
    assert set(calls.statuses) <= {200, 503, 0}, calls.statuses
    assert calls.statuses[503] > 0, calls.statuses
    assert await sql_scalar(database_url, "SELECT count(*) FROM contacts") == len(done) == len(set(done))
    whole = await sql_scalar(database_url, (
        "SELECT count(*) FROM contacts c JOIN identifiers i ON i.contact_id = c.id AND i.kind = 'email' "
        "JOIN group_members m ON m.contact_id = c.id "
        "WHERE c.external_customer_id IN :ids AND i.value = lower(c.external_customer_id) || '@example.com'"),
        ids=done)
    assert whole == len(done)


async def test_postgres_restarted_during_an_import(own_postgres, clean_redis, tmp_path):
    """PostgreSQL stops in the middle of a 3000-row import and starts again: the status call answers a JSON
    503 meanwhile, the import resumes by itself in the same process and finishes, and every row is whole."""
    pg, database_url = own_postgres
    rows = 3000
    body = {"contacts": [{"externalCustomerId": f"K{i}", "channels": [{"type": "email", "value": f"k{i}@example.com"}]}
                         for i in range(rows)], "dedupeOn": "email", "groupNames": ["imported"]}
    env = service_env(clean_redis, database_url, tmp_path, IMPORT_CHUNK_ROWS="50", WORKER_ENABLED="0")
    calls = Calls()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http, service(env, tmp_path / "serve.log") as server:
        session_id = (await calls.post(http, f"{server.url}/api/v1/contacts", body))["asyncSessionId"]
        status_url = f"{server.url}/api/v1/importstatus/{session_id}"

        async def status() -> tuple[int, dict[str, Any]]:
            async with http.get(status_url, headers=auth()) as r:
                return r.status, await r.json(content_type=None)

        code, progress = await eventually(status, lambda s: s[0] == 200 and s[1]["processed"] >= 300, 60)
        assert progress["status"] == "IMPORTING", progress
        await asyncio.to_thread(pg.stop)
        code, answer = await status()
        assert code == 503 and answer["status"] == 503, answer
        await asyncio.sleep(1.0)
        await asyncio.to_thread(pg.start)
        code, report = await eventually(status, lambda s: s[0] == 200 and s[1]["status"] in ("FINISHED", "ERROR"),
                                        90)
        assert report["status"] == "FINISHED", report
        assert (report["created"], report["updated"], report["failedContacts"]) == (rows, 0, [])
        assert [m["index"] for m in report["mapping"]] == list(range(rows))
    assert await assert_rows_whole(database_url) == rows


async def _len(items: list[str]) -> int:
    return len(items)


async def _n(statuses: Counter[int], status: int) -> int:
    return statuses[status]
