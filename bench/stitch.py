"""The stitch benchmark: what a subscribe with an anonymous history costs, against the raw work it must do.

For SQLite (a fresh temp file) and PostgreSQL (a database of this run, ``bench_stitch_<pid>``, created,
migrated and dropped again, so concurrent runs cannot truncate each other's tables; ``BENCH_PG_URL`` names
an existing database instead, whose tables are truncated), with a private redis-server:

1. Stitch latency. A fresh visitor gets 1,000 (then 10,000) realistic shop events through the tracker's real
   write path (``parse_batch`` + ``EventLog.append``, 100 events per batch); then ``POST
   /api/v1/contact/subscribe`` with a new external ID and ``visitorIds=[vid]`` is timed from request to
   response. p50 (min, max) of ``RUNS`` runs after a warm-up, a fresh visitor and contact each run. A
   subscribe with an empty history is timed too: the fixed cost of the contact itself.
2. Raw work, interleaved with (1), same database and Redis: LRANGE the same stored events (a server-side COPY
   of the visitor's history taken before the subscribe), orjson-decode them, and one bulk ``INSERT ... ON
   CONFLICT DO NOTHING`` of the same timeline rows (``stitcher.stitch.insert_timeline``: one statement over
   arrays on PostgreSQL, a Core executemany on SQLite) in one transaction: the floor
   a stitch can reach. Targets: stitch p50 <= 2x raw p50, and on PostgreSQL a subscribe with a 1,000-event
   history answered in < 100 ms (p50).
3. Add/update throughput: ``POST /api/v1/contact`` for ``CONTACTS`` new contacts (unique external IDs,
   email and phone), ``CONCURRENCY`` requests in flight, then the same contacts again (updates); requests/s.
   Each phase stops after ``THROUGHPUT_SECONDS``. Target on PostgreSQL (issue 9): >= 1,000 requests/s and
   <= 1 ms of service CPU per call, reported as ratios to the target. The whole run stays within
   ``TIME_BUDGET_S``: a part that would pass it is skipped and reported (and the run then fails). The
   machine's other load is reported too.

The service is the real ``stitcher serve`` in its own process (uvloop, JSON request logs to a file, worker
off), so the HTTP client does not share its core; ``BENCH_STITCH_INPROCESS=1`` runs ``stitcher.app`` in this
process instead (aiohttp ``TestServer``), which is also the fallback when ``stitcher serve`` does not start.
``BENCH_PROFILE=1`` adds, per backend, a cProfile (CPU time) of in-process 10,000-event subscribes and of
in-process add/updates, and prints where their time goes (for add/updates also by package). Besides wall
times, every measurement records the CPU each process used (this one, the service, redis-server, the run's
PostgreSQL backends): those figures hardly move with other load on the machine, the wall times do.
Everything runs on 127.0.0.1 and is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import cProfile
import dataclasses
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson

from bench.common import (
    BENCH_RATE_LIMITS,
    HOST,
    VENV_BIN,
    Child,
    Children,
    cpu_seconds,
    free_port,
    machine_busy_seconds,
    per_backend,
    say,
    wait_http,
    with_bench_limits,
)

try:  # the redis-server starter lives with the tracker benchmark for now
    from bench.common import start_redis  # type: ignore[attr-defined]
except ImportError:
    from bench.tracker import start_redis

T = TypeVar("T")

SIZES = (1_000, 10_000)  # anonymous events per visitor
RUNS = 5  # measured runs per size (after one warm-up)
FIXED_RUNS = 5  # subscribes with an empty history
BATCH = 100  # events per beacon, the tracker's limit
CONTACTS, CONCURRENCY = 500, 16  # add/update throughput
THROUGHPUT_SECONDS = 6.0  # each add/update phase stops after this even when not all contacts were sent
THROUGHPUT_RESERVE_S = 2 * THROUGHPUT_SECONDS
TARGET_RATIO, TARGET_PG_1K_MS = 2.0, 100.0
# issue 9: add/update on PostgreSQL at >= 1,000 requests/s with 16 in flight, <= 1 ms of service CPU per call
TARGET_ADD_UPDATE_RPS, TARGET_ADD_UPDATE_CPU_MS = 1000.0, 1.0
TIME_BUDGET_S = 170.0  # the whole benchmark stays under 3 minutes; later parts are skipped past this
API_KEY = "bench-key"
PG_BASE_URL = f"postgresql+asyncpg://postgres@{HOST}:5432"  # + a database of this run
PROFILE_RUNS = 3
WEB_DATA = ("url", "ref", "title", "props", "bot", "ts")  # what a web event keeps on the timeline
_PAGES = [
    ("/", "Example Shop | shoes, bags and more", None),
    ("/c/shoes", "Shoes | Example Shop", {"category": "shoes"}),
    ("/c/bags", "Bags | Example Shop", {"category": "bags"}),
    ("/p/blue-runner-42", "Blue Runner 42 | Example Shop", {"sku": "BR-42", "price": 59.9, "currency": "EUR"}),
    ("/p/city-tote", "City Tote | Example Shop", {"sku": "CT-7", "price": 89.0, "currency": "EUR"}),
    ("/search?q=running+shoes", "Search: running shoes | Example Shop", {"query": "running shoes", "results": 24}),
]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _stats(samples: list[tuple[float, dict[str, float]]]) -> dict[str, Any]:
    """p50/min/max in ms of the wall times; p50 of the CPU used, in all and per part of the system."""
    if not samples:
        return {"runs": 0, "p50_ms": None, "min_ms": None, "max_ms": None, "cpu_p50_ms": None}
    walls = [w for w, _ in samples]
    parts = sorted({k for _, cpu in samples for k in cpu})
    return {"runs": len(samples), "p50_ms": _ms(statistics.median(walls)), "min_ms": _ms(min(walls)),
            "max_ms": _ms(max(walls)), "all_ms": [_ms(w) for w in walls],
            "cpu_p50_ms": _ms(statistics.median(sum(cpu.values()) for _, cpu in samples)),
            "cpu_p50_ms_by_part": {k: _ms(statistics.median(cpu.get(k, 0.0) for _, cpu in samples)) for k in parts}}


def _pct(samples: list[float], p: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return _ms(ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))])


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- realistic anonymous history through the tracker's write path --------------------------------------

def _events(n: int, start: int, ts0: int) -> list[dict[str, Any]]:
    out = []
    for i in range(start, start + n):
        path, title, props = _PAGES[i % len(_PAGES)]
        kind = "page_view"
        if i % 10 == 7:
            kind, props = "add_to_cart", {"sku": "BR-42", "price": 59.9, "qty": 1, "currency": "EUR"}
        e: dict[str, Any] = {"id": str(uuid.uuid4()), "type": kind, "ts": ts0 + i * 1000,
                             "url": f"https://shop.example.com{path}" + ("?utm_source=newsletter" if i < 5 else ""),
                             "ref": "https://www.google.com/" if i == 0 else "https://shop.example.com/",
                             "title": title}
        if props:
            e["props"] = props
        out.append(e)
    return out


async def fill_history(eventlog: Any, vid: str, n: int) -> None:
    """``n`` events for ``vid`` as the tracker stores them: validated beacons of 100, appended by Lua."""
    from tracker.beacon import Limits, parse_batch

    limits = Limits()
    now = _now_ms()
    ts0 = now - n * 1000 - 60_000  # one event a second, ending a minute ago
    for start in range(0, n, BATCH):
        events = _events(min(BATCH, n - start), start, ts0)
        body = orjson.dumps({"vid": vid, "sent_at": now, "events": events})
        batch = parse_batch(body, limits, received_at=_now_ms())
        if batch.rejected:
            raise RuntimeError(f"the tracker rejected bench events: {batch.rejected[:2]}")
        result = await eventlog.append(vid, batch.accepted)
        if result.stored != len(events):
            raise RuntimeError(f"only {result.stored} of {len(events)} events stored ({result})")


# --- the databases -------------------------------------------------------------------------------------

def _process_gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def _pg_admin(url: str, statements: list[str], drop_stale: bool = False) -> None:
    """Run statements on the PostgreSQL server of ``url`` through its ``postgres`` database.

    ``drop_stale`` first drops the databases of earlier runs whose process is gone (killed before cleanup).
    """
    import asyncpg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    assert u.host in (HOST, "localhost"), f"PostgreSQL must be on {HOST}: {u.host}"

    async def run() -> None:
        conn = await asyncpg.connect(host=u.host, port=u.port or 5432, user=u.username or "postgres",
                                     password=u.password, database="postgres", timeout=5)
        try:
            if drop_stale:
                for name in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'bench\\_stitch\\_%'"):
                    pid = name[0].rsplit("_", 1)[-1]
                    if pid.isdigit() and _process_gone(int(pid)):
                        await conn.execute(f'DROP DATABASE IF EXISTS "{name[0]}" WITH (FORCE)')
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def _pg_url() -> tuple[str, str | None]:
    """The PostgreSQL URL and the database this run creates and drops (None: BENCH_PG_URL's, kept).

    Each run gets its own database, so two benchmark runs at once (``python -m bench`` of another engineer)
    cannot truncate each other's tables mid-measurement.
    """
    if os.environ.get("BENCH_PG_URL"):
        return os.environ["BENCH_PG_URL"], None
    name = f"bench_stitch_{os.getpid()}"
    return f"{PG_BASE_URL}/{name}", name


def _truncate_pg(url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def truncate() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                tables = [r[0] for r in await conn.execute(text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"))]
                if tables:
                    await conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        finally:
            await engine.dispose()

    asyncio.run(truncate())


def prepare_database(backend: str, tmp: Path) -> tuple[str, str | None]:
    """An empty, migrated database for ``backend``: its URL and the PostgreSQL database to drop after."""
    from stitcher.store.migrate import upgrade
    from tracker.settings import Settings

    if backend == "sqlite":
        path = tmp / "stitch-bench.db"
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            p.unlink(missing_ok=True)
        url = f"sqlite+aiosqlite:///{path}"
        upgrade(Settings(database_url=url))
        return url, None
    url, created = _pg_url()
    if created is not None:
        _pg_admin(url, [f'DROP DATABASE IF EXISTS "{created}" WITH (FORCE)', f'CREATE DATABASE "{created}"'],
                  drop_stale=True)
    try:
        upgrade(Settings(database_url=url))
        _truncate_pg(url)
    except BaseException:
        drop_database(url, created)
        raise
    return url, created


def drop_database(url: str, name: str | None) -> None:
    if name is not None:
        try:
            _pg_admin(url, [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'])
        except Exception as exc:
            say(f"      could not drop database {name}: {exc}")


# --- the service -----------------------------------------------------------------------------------------

def start_service(children: Children, tmp: Path, backend: str, db_url: str, redis_url: str) -> tuple[Child, str]:
    """``stitcher serve`` with the worker off and JSON request logs to a file, as in production."""
    stitcher = VENV_BIN / "stitcher"
    if not stitcher.exists():
        raise RuntimeError(f"{stitcher} not found")
    env = dict(os.environ)
    for name in ("PORT", "HISTORY_CAP", "ANON_TTL_DAYS", "MAX_BODY_BYTES", "MAX_EVENTS", "STITCH_PAUSE_MS",
                 "ALLOWED_ORIGINS", "PLACEHOLDERS", "DEFAULT_PHONE_REGION"):
        env.pop(name, None)
    env.update(REDIS_URL=redis_url, DATABASE_URL=db_url, API_KEYS=API_KEY, WORKER_ENABLED="0", LOG_JSON="1",
               VAR_DIR=str(tmp), HOST=HOST)
    env = with_bench_limits(env)
    port = free_port()
    log = tmp / f"service-{backend}.stderr"
    child = children.start(f"stitcher serve ({backend})", [str(stitcher), "serve", "--port", str(port)],
                           env=env, log=log)
    failure = wait_http(child, f"http://{HOST}:{port}/healthz", timeout=30)
    if failure is not None:
        children.stop(child)
        raise RuntimeError(failure)
    return child, f"http://{HOST}:{port}"


@contextmanager
def served(children: Children, tmp: Path, backend: str, redis_url: str,
           prepare: Callable[[str, Path], tuple[str, str | None]] = prepare_database,
           ) -> Iterator[tuple[Child, str, str]]:
    """A fresh database of ``backend`` (made by ``prepare``) with ``stitcher serve`` on it, as (the service, its
    URL, the database URL); the service stopped and the database dropped after."""
    db_url, created = prepare(backend, tmp)
    try:
        service, url = start_service(children, tmp, backend, db_url, redis_url)
        try:
            yield service, url, db_url
        finally:
            children.stop(service)
    finally:
        drop_database(db_url, created)


def measure_served(label: str, measure: Callable[[str, str, int], Awaitable[dict[str, Any]]],
                   prepare: Callable[[str, Path], tuple[str, str | None]] = prepare_database) -> dict[str, Any]:
    """``measure(service URL, database URL, service pid)`` against a real ``stitcher serve`` on SQLite, then on
    PostgreSQL (each a fresh database made by ``prepare``, dropped after), beside one Redis of the run."""
    tmp = Path(tempfile.mkdtemp(prefix=f"stitcher-bench-{label}-"))
    try:
        with Children() as children:
            _, redis_url = start_redis(children, tmp)

            def run(backend: str) -> dict[str, Any]:
                with served(children, tmp, backend, redis_url, prepare) as (service, url, db_url):
                    result = asyncio.run(measure(url, db_url, service.pid))
                say(f"      {orjson.dumps(result).decode()}")
                return result

            results: dict[str, Any] = per_backend(run)
            return results
    finally:
        if os.environ.get("BENCH_KEEP_TMP") != "1":
            shutil.rmtree(tmp, ignore_errors=True)


def own_database(backend: str, tmp: Path, label: str) -> tuple[str, str | None]:
    """An empty migrated database: a temp SQLite file, or the PostgreSQL database ``bench_<label>_<pid>`` of
    this run; its URL and the PostgreSQL database to drop after (None for SQLite)."""
    from stitcher.store.migrate import upgrade
    from tracker.settings import Settings

    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / f'{label}-bench.db'}"
        upgrade(Settings(database_url=url))
        return url, None
    name = f"bench_{label}_{os.getpid()}"
    url = f"{PG_BASE_URL}/{name}"
    _pg_admin(url, [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'])
    try:
        upgrade(Settings(database_url=url))
    except BaseException:
        drop_database(url, name)
        raise
    return url, name


_LOG_SINK: Any = None


def _quiet_logs() -> None:
    """In-process runs: the service's JSON request logs, rendered as in production, into /dev/null."""
    global _LOG_SINK
    from tracker.logs import configure_logging

    if _LOG_SINK is None:
        _LOG_SINK = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process's loggers
    saved = sys.stderr
    sys.stderr = _LOG_SINK
    try:
        configure_logging(json=True)
    finally:
        sys.stderr = saved


@asynccontextmanager
async def inprocess_service(db_url: str, redis_url: str, tmp: Path) -> AsyncIterator[str]:
    from aiohttp.test_utils import TestServer

    from stitcher.app import init_app
    from tracker.settings import Settings

    _quiet_logs()
    settings = Settings.from_env(with_bench_limits({
        k: v for k, v in os.environ.items() if k in BENCH_RATE_LIMITS}))
    settings = dataclasses.replace(settings, redis_url=redis_url, database_url=db_url, api_keys=(API_KEY,),
                                   var_dir=tmp, worker_enabled=False, host=HOST)
    server = TestServer(init_app(settings), host=HOST, port=free_port())
    await server.start_server()
    try:
        yield f"http://{HOST}:{server.port}"
    finally:
        await server.close()


# --- the measurements --------------------------------------------------------------------------------------

def _tasks_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of a process, ns-precise (/proc/PID/task/*/schedstat); {} once it is gone."""
    out: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            pass
    return out


Task = tuple[str, int, int]  # part, pid, thread id


class CpuMeter:
    """CPU seconds used by each part of the system: a figure that other load on the machine hardly moves.

    ``bench`` is this process (the HTTP client, the raw work, and the service too when it runs in-process),
    ``service`` the ``stitcher serve`` process, ``redis`` the private redis-server, ``postgres`` the server
    processes connected to this run's own database (nothing else uses it). Threads and connections that end
    during a measurement (a pool's overflow) keep the CPU they had when last seen: ``poll()`` during long runs.
    """

    def __init__(self, pids: dict[str, int], db: Any) -> None:
        self.pids = pids
        self.db = db if db.dialect == "postgresql" else None
        self._peak: dict[Task, float] = {}

    async def _read(self) -> tuple[float, dict[Task, float]]:
        from sqlalchemy import text

        pids = list(self.pids.items())
        if self.db is not None:
            async with self.db.reader() as s:
                pids += [("postgres", int(p)) for p in (await s.execute(text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"))).scalars()]
        tasks = {(part, pid, tid): cpu for part, pid in pids for tid, cpu in _tasks_cpu_s(pid).items()}
        return time.process_time(), tasks

    async def begin(self) -> tuple[float, dict[Task, float]]:
        mark = await self._read()
        self._peak = dict(mark[1])
        return mark

    async def poll(self) -> None:
        for task, cpu in (await self._read())[1].items():
            self._peak[task] = max(cpu, self._peak.get(task, 0.0))

    async def during(self, work: Awaitable[Any]) -> tuple[float, dict[str, float]]:
        """Await ``work``, polling every 0.1 s; its wall seconds and the CPU seconds of each part meanwhile."""

        async def poll() -> None:
            while True:
                await asyncio.sleep(0.1)
                await self.poll()

        mark = await self.begin()
        poller = asyncio.create_task(poll())
        started = time.perf_counter()
        try:
            await work
        finally:
            wall = time.perf_counter() - started
            poller.cancel()
            try:
                await poller
            except asyncio.CancelledError:
                pass
        return wall, await self.end(mark)

    async def end(self, mark: tuple[float, dict[Task, float]]) -> dict[str, float]:
        bench, tasks = await self._read()
        for task, cpu in tasks.items():
            self._peak[task] = max(cpu, self._peak.get(task, 0.0))
        out = {"bench": bench - mark[0], **{part: 0.0 for part in self.pids},
               **({"postgres": 0.0} if self.db is not None else {})}
        for task, cpu in self._peak.items():
            out[task[0]] += max(0.0, cpu - mark[1].get(task, 0.0))
        return out


Sample = tuple[float, dict[str, float]]  # wall seconds, CPU seconds per part


class Bench:
    """The benchmark's own clients: the event log (tracker's write path), the database, HTTP."""

    def __init__(self, base_url: str, db_url: str, redis_url: str, pids: dict[str, int] | None = None) -> None:
        import aiohttp
        from redis.asyncio import Redis

        from stitcher.store.db import Database
        from tracker.eventlog import EventLog
        from tracker.settings import Settings

        assert base_url.startswith(f"http://{HOST}:"), base_url
        defaults = Settings()
        self.base_url = base_url
        self.redis = Redis.from_url(redis_url)
        self.eventlog = EventLog(self.redis, partitions=defaults.partitions,
                                 anon_ttl_seconds=defaults.anon_ttl_seconds, history_cap=defaults.history_cap)
        self.db = Database(db_url)
        self.meter = CpuMeter(pids or {}, self.db)
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=120), cookie_jar=aiohttp.DummyCookieJar(),
            connector=aiohttp.TCPConnector(limit=CONCURRENCY * 2),
            headers={"Authorization": aiohttp.BasicAuth("backend", API_KEY).encode(),
                     "Content-Type": "application/json"})

    async def close(self) -> None:
        await self.http.close()
        await self.db.close()
        await self.redis.aclose()

    async def post(self, path: str, body: bytes) -> tuple[int, Any, float]:
        """One request: status, JSON answer, seconds from sending to the whole answer read."""
        started = time.perf_counter()
        async with self.http.post(self.base_url + path, data=body) as r:
            raw = await r.read()
            elapsed = time.perf_counter() - started
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            answer = raw[:300].decode(errors="replace")
        return r.status, answer, elapsed

    # 1. the stitch, through the API

    async def visitor(self, n: int) -> tuple[str, str | None]:
        """A new visitor with ``n`` stored events, and a copy of its history for the raw work (None if n=0)."""
        vid = str(uuid.uuid4())
        if not n:
            return vid, None
        await fill_history(self.eventlog, vid, n)
        copy = f"bench:raw:{vid}"  # the same stored events, read by the raw work after the stitch took them
        if not await self.redis.copy(self.eventlog.keys(vid).events, copy):
            raise RuntimeError("COPY of the visitor history failed")
        return vid, copy

    async def subscribe(self, vid: str, n: int, prof: cProfile.Profile | None = None) -> Sample:
        """A subscribe of a new contact with visitor ``vid`` (``n`` events): seconds to the answer, CPU.

        With ``prof`` (in-process only) the request is profiled.
        """
        tag = uuid.uuid4().hex[:12]
        body = orjson.dumps({"contact": {
            "externalCustomerId": f"bench-{tag}", "firstName": "Ann", "lastName": "Bench",
            "channels": [{"type": "email", "value": f"ann.{tag}@example.com"}],
            "visitorIds": [vid]}, "groups": ["newsletter"], "formType": "popup"})
        mark = await self.meter.begin()
        if prof is not None:
            prof.enable()
        try:
            status, answer, elapsed = await self.post("/api/v1/contact/subscribe", body)
        finally:
            if prof is not None:
                prof.disable()
        cpu = await self.meter.end(mark)
        if status != 200:
            raise RuntimeError(f"subscribe answered {status}: {answer}")
        if answer.get("stitchedEvents") != n:
            raise RuntimeError(f"subscribe stitched {answer.get('stitchedEvents')} events, not {n}: {answer}")
        return elapsed, cpu

    # 2. the raw work: read the same events from Redis, one bulk insert of the same rows

    async def raw(self, key: str, n: int) -> Sample:
        """LRANGE + decode + one bulk insert in one transaction of the ``n`` events under ``key``."""
        from sqlalchemy import func, select

        from stitcher.stitch import insert_timeline
        from stitcher.store.models import Contact, TimelineEvent

        async with self.db.transaction() as s:  # the contact the rows belong to (foreign key), untimed
            contact = Contact(external_customer_id=f"raw-{uuid.uuid4().hex[:12]}", created_at=_now_ms(),
                              updated_at=_now_ms())
            s.add(contact)
            await s.flush()
            cid = contact.id
        vid = key.rsplit(":", 1)[-1]
        mark = await self.meter.begin()
        started = time.perf_counter()
        events = [orjson.loads(x) for x in await self.redis.lrange(key, 0, -1)]
        rows = [{"contact_id": cid, "event_id": e["id"], "source": "web", "type": e["type"],
                 "occurred_at": e["t"], "received_at": e["rt"], "visitor_id": vid,
                 "data": {k: e[k] for k in WEB_DATA if k in e}} for e in events]
        async with self.db.transaction() as s:
            await insert_timeline(self.db, s, rows)  # the project's fastest bulk insert for this dialect
        elapsed = time.perf_counter() - started
        cpu = await self.meter.end(mark)
        async with self.db.reader() as s:
            stored = (await s.execute(select(func.count()).select_from(TimelineEvent)
                                      .where(TimelineEvent.contact_id == cid))).scalar_one()  # type: ignore[arg-type]
        if stored != n:
            raise RuntimeError(f"raw insert stored {stored} of {n} rows")
        await self.redis.delete(key)
        return elapsed, cpu

    async def pair(self, n: int, raw_first: bool) -> tuple[Sample, Sample]:
        """One run: a fresh visitor with ``n`` events; its subscribe and the raw work on a copy of its events."""
        vid, copy = await self.visitor(n)
        assert copy is not None
        if raw_first:
            raw = await self.raw(copy, n)
            return await self.subscribe(vid, n), raw
        stitch = await self.subscribe(vid, n)
        return stitch, await self.raw(copy, n)

    # 3. add/update throughput

    async def add_update(self, bodies: list[bytes], seconds: float) -> dict[str, Any]:
        """POST the bodies with ``CONCURRENCY`` in flight, stopping after ``seconds``; requests/s of 200s."""
        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        errors: list[str] = []
        queue = list(reversed(bodies))
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            while queue and time.perf_counter() < stop:
                body = queue.pop()
                status, answer, elapsed = await self.post("/api/v1/contact", body)
                statuses[status] += 1
                latencies.append(elapsed)
                if status != 200 and len(errors) < 3:
                    errors.append(f"{status}: {str(answer)[:200]}")

        wall, cpu = await self.meter.during(asyncio.gather(*(worker() for _ in range(CONCURRENCY))))
        ok = statuses.get(200, 0)
        per_request = {k: round(v * 1000 / max(1, len(latencies)), 2) for k, v in cpu.items()}
        return {"requests": len(latencies), "ok": ok, "seconds": round(wall, 3), "rps": round(ok / wall, 1),
                "cpu_ms_per_request": per_request,
                "p50_ms": _pct(latencies, 50), "p99_ms": _pct(latencies, 99), "max_ms": _pct(latencies, 100),
                "statuses": {str(k): v for k, v in sorted(statuses.items())}, "errors": errors,
                "complete": len(latencies) == len(bodies)}


def _contact_bodies(tag: str, update: bool) -> list[bytes]:
    out = []
    for i in range(CONTACTS):
        body: dict[str, Any] = {
            "externalCustomerId": f"tp-{tag}-{i}", "firstName": "Olena" if update else "Ann",
            "lastName": f"Tester{i}", "languageCode": "uk" if update else "en",
            "channels": [{"type": "email", "value": f"tp{i}.{tag}@example.com"},
                         {"type": "sms", "value": f"+38067{1000000 + i:07d}"}],
        }
        if update:
            body["fields"] = [{"id": 1, "value": "vip"}]
        out.append(orjson.dumps(body))
    return out


async def measure(backend: str, base_url: str, db_url: str, redis_url: str, deadline: float,
                  pids: dict[str, int]) -> dict[str, Any]:
    """Everything measured on one backend; parts that would pass ``deadline`` are skipped and reported."""
    b = Bench(base_url, db_url, redis_url, pids)
    out: dict[str, Any] = {"stitch": {}, "fixed": None, "add_update": None, "skipped": []}
    try:
        vid, _ = await b.visitor(0)
        await b.subscribe(vid, 0)  # warm-up: connections, statement caches, the group row
        await b.pair(SIZES[0], raw_first=False)  # and the stitch's and the raw work's statements
        fixed = []
        for _ in range(FIXED_RUNS):
            vid, _ = await b.visitor(0)
            fixed.append(await b.subscribe(vid, 0))
        out["fixed"] = _stats(fixed)
        say(f"      subscribe with an empty history: p50 {out['fixed']['p50_ms']} ms")
        for n in SIZES:
            if time.monotonic() > deadline - THROUGHPUT_RESERVE_S:
                out["skipped"].append(f"{n:,} events: time budget spent")
                continue
            started = time.monotonic()
            stitch, raw = [], []
            for i in range(RUNS):
                st, rw = await b.pair(n, raw_first=bool(i % 2))  # alternate the order against drift
                stitch.append(st)
                raw.append(rw)
            s, r = _stats(stitch), _stats(raw)
            ratio = round(s["p50_ms"] / r["p50_ms"], 2) if r["p50_ms"] else None
            cpu_ratio = round(s["cpu_p50_ms"] / r["cpu_p50_ms"], 2) if r["cpu_p50_ms"] else None
            row: dict[str, Any] = {"events": n, "stitch": s, "raw": r, "ratio": ratio, "cpu_ratio": cpu_ratio,
                                   "target_ratio": TARGET_RATIO,
                                   "pass_ratio": ratio is not None and ratio <= TARGET_RATIO,
                                   "stitch_minus_empty_p50_ms": round(s["p50_ms"] - out["fixed"]["p50_ms"], 2)}
            if backend == "postgresql" and n == 1_000:
                row["target_p50_ms"] = TARGET_PG_1K_MS
                row["pass_latency"] = s["p50_ms"] < TARGET_PG_1K_MS
            out["stitch"][str(n)] = row
            say(f"      {n:>6,} events: stitch p50 {s['p50_ms']} ms, raw p50 {r['p50_ms']} ms, ratio {ratio}; "
                 f"CPU {s['cpu_p50_ms']} vs {r['cpu_p50_ms']} ms, ratio {cpu_ratio} "
                 f"({time.monotonic() - started:.1f} s)")
        seconds = min(THROUGHPUT_SECONDS, (deadline - time.monotonic()) / 2)
        if seconds < 1:
            out["skipped"].append("add/update throughput: time budget spent")
        else:
            tag = uuid.uuid4().hex[:8]
            new = await b.add_update(_contact_bodies(tag, update=False), seconds)
            done = new["requests"]  # update exactly the contacts that were created
            existing = await b.add_update(_contact_bodies(tag, update=True)[:done], seconds)
            for phase in (new, existing):
                service_ms = phase["cpu_ms_per_request"].get("service")
                phase["rps_ratio_to_target"] = round(phase["rps"] / TARGET_ADD_UPDATE_RPS, 2)
                phase["service_cpu_ms_ratio_to_target"] = (
                    None if service_ms is None else round(service_ms / TARGET_ADD_UPDATE_CPU_MS, 2))
                phase["pass_target"] = (phase["rps"] >= TARGET_ADD_UPDATE_RPS and service_ms is not None
                                        and service_ms <= TARGET_ADD_UPDATE_CPU_MS)
            out["add_update"] = {"contacts": CONTACTS, "concurrency": CONCURRENCY, "max_seconds": round(seconds, 1),
                                 "target_rps": TARGET_ADD_UPDATE_RPS,
                                 "target_service_cpu_ms": TARGET_ADD_UPDATE_CPU_MS, "new": new, "existing": existing}
            say(f"      add/update: {new['rps']} req/s new ({new['requests']} requests), "
                 f"{existing['rps']} req/s existing ({existing['requests']})")
    finally:
        await b.close()
    return out


async def profile_stitch(db_url: str, redis_url: str, tmp: Path, n: int = SIZES[-1]) -> dict[str, Any]:
    """In-process subscribes of ``n``-event histories under cProfile: the top functions by own and total time."""
    async with inprocess_service(db_url, redis_url, tmp) as base_url:
        b = Bench(base_url, db_url, redis_url, {})
        try:
            vid, _ = await b.visitor(n)
            await b.subscribe(vid, n)
            prof = cProfile.Profile(time.process_time)  # CPU, not waiting
            seconds = []
            for _ in range(PROFILE_RUNS):
                vid, _ = await b.visitor(n)
                seconds.append((await b.subscribe(vid, n, prof))[0])
        finally:
            await b.close()
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    return {"runs": len(seconds), "p50_ms": _ms(statistics.median(seconds)), "report": text.getvalue()}


def _by_package(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Own CPU time summed per installed package (or per project module, or per builtin), biggest first."""
    parts: Counter[str] = Counter()
    for (filename, _line, name), (_cc, _nc, own, _cum, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if "site-packages/" in filename:
            key = filename.split("site-packages/")[1].split("/")[0]
        elif "/stitcher/" in filename or "/tracker/" in filename:
            key = filename.rsplit("/", 2)[-2] + "/" + filename.rsplit("/", 1)[-1]
        else:
            key = "python: " + (filename.rsplit("/", 1)[-1] if filename.startswith("/") else name)
        parts[key] += own
    total = sum(parts.values()) or 1.0
    return [(k, round(v / total, 3)) for k, v in parts.most_common(20)]


async def profile_add_update(db_url: str, redis_url: str, tmp: Path, n: int = 200) -> dict[str, Any]:
    """``n`` in-process add/updates of new contacts, ``CONCURRENCY`` in flight, under cProfile (the HTTP
    client shares the process): CPU by package and the top functions."""
    async with inprocess_service(db_url, redis_url, tmp) as base_url:
        b = Bench(base_url, db_url, redis_url, {})
        try:
            bodies = _contact_bodies(uuid.uuid4().hex[:8], update=False)[:n]
            await b.add_update(bodies[:CONCURRENCY], THROUGHPUT_SECONDS)  # warm-up
            prof = cProfile.Profile(time.process_time)
            prof.enable()
            result = await b.add_update(bodies[CONCURRENCY:], THROUGHPUT_SECONDS)
            prof.disable()
        finally:
            await b.close()
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    parts = _by_package(stats)
    text.write("  CPU by package (own time, client included):\n")
    text.writelines(f"    {share:6.1%}  {name}\n" for name, share in parts)
    stats.sort_stats("tottime").print_stats(25)
    return {"requests": result["requests"], "by_package": parts, "report": text.getvalue()}


# --- the whole benchmark -------------------------------------------------------------------------------

def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run on uvloop when installed, as ``stitcher serve`` does."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro_fn())  # type: ignore[arg-type]


def run_backend(backend: str, children: Children, tmp: Path, redis: Child, redis_url: str, deadline: float,
                inprocess: bool) -> dict[str, Any]:
    import redis as redis_py

    client = redis_py.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    db_url, created = prepare_database(backend, tmp)
    try:
        return _run_backend(backend, children, tmp, redis, redis_url, db_url, deadline, inprocess)
    finally:
        drop_database(db_url, created)


def _run_backend(backend: str, children: Children, tmp: Path, redis: Child, redis_url: str, db_url: str,
                 deadline: float, inprocess: bool) -> dict[str, Any]:
    runner = "in-process aiohttp TestServer (stitcher.app.init_app)"
    service: Child | None = None
    base_url = ""
    if not inprocess:
        try:
            service, base_url = start_service(children, tmp, backend, db_url, redis_url)
            runner = "stitcher serve (subprocess, uvloop, worker off)"
        except RuntimeError as exc:
            say(f"      `stitcher serve` did not start, running the app in-process: "
                 f"{str(exc).strip().splitlines()[-1][:200]}")
    say(f"      service: {runner}")
    pids = {"bench": os.getpid(), "redis": redis.pid, **({"service": service.pid} if service else {})}
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    busy_before, wall_before = machine_busy_seconds(), time.monotonic()
    try:
        if service is not None:
            result = _run(lambda: measure(backend, base_url, db_url, redis_url, deadline,
                                          {"service": service.pid, "redis": redis.pid}))
            if not service.alive():
                raise RuntimeError(f"the service died during the benchmark:\n{service.tail()}")
        else:
            async def inproc() -> dict[str, Any]:
                async with inprocess_service(db_url, redis_url, tmp) as url:
                    return await measure(backend, url, db_url, redis_url, deadline, {"redis": redis.pid})

            result = _run(inproc)
        wall = time.monotonic() - wall_before
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        others = max(0.0, machine_busy_seconds() - busy_before - sum(cpu.values()))
        if service is None:
            cpu["service (in bench)"] = cpu.pop("bench")
        # PostgreSQL's backends count as "others" here; everything else is other people's work on this machine
        result["cpu_cores"] = {**{k: round(v / wall, 2) for k, v in cpu.items()},
                               "others (incl. postgres)": round(others / wall, 2)}
        result["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if service is not None:
            children.stop(service)
    result["service_runner"] = runner
    result["database"] = "sqlite (temp file)" if backend == "sqlite" else db_url
    if os.environ.get("BENCH_PROFILE", "") not in ("", "0"):
        say("      profiling in-process 10,000-event subscribes with cProfile (not part of the figures) ...")
        prof = _run(lambda: profile_stitch(db_url, redis_url, tmp))
        result["profile"] = {k: v for k, v in prof.items() if k != "report"}
        result["profile"]["top"] = prof["report"].splitlines()[:120]
        say(prof["report"])
        say("      profiling in-process add/updates of new contacts with cProfile (not part of the figures) ...")
        prof = _run(lambda: profile_add_update(db_url, redis_url, tmp))
        result["profile_add_update"] = {k: v for k, v in prof.items() if k != "report"}
        say(prof["report"])
    return result


def _f(v: Any, width: int, fmt: str = ".1f", align: str = ">") -> str:
    return f"{v:{align}{width}{fmt}}" if isinstance(v, int | float) else f"{'—':{align}{width}}"


def _pf(ok: bool | None) -> str:
    return "PASS" if ok else "FAIL"


def _range(x: dict[str, Any]) -> str:
    return f"{_f(x.get('p50_ms'), 8)} ({_f(x.get('min_ms'), 0)}-{_f(x.get('max_ms'), 0)})"


def report(results: dict[str, Any]) -> None:
    backends = results["backends"]
    say()
    say("  Stitch: POST /api/v1/contact/subscribe of a new contact with a visitor's history, against the raw work")
    say("  (LRANGE + decode + one bulk INSERT of the same rows). Wall ms: p50 (min-max) of "
         f"{results['runs']} runs; CPU ms: p50 of all processes involved")
    say(f"  {'backend':<11}{'events':>7}  {'stitch wall':<24}{'raw wall':<24}{'ratio':>6}  "
         f"{'target':<11}{'CPU stitch':>10}{'raw':>8}{'ratio':>7}")
    for name, r in backends.items():
        if "error" in r:
            say(f"  {name:<11}  error: {r['error']}")
            continue
        fixed = r.get("fixed") or {}
        say(f"  {name:<11}{0:>7}  {_range(fixed):<24}{'':<24}{'':>6}  {'':<11}"
             f"{_f(fixed.get('cpu_p50_ms'), 10)}    (empty history: the contact alone)")
        for row in r["stitch"].values():
            s, w = row["stitch"], row["raw"]
            say(f"  {name:<11}{row['events']:>7,}  {_range(s):<24}{_range(w):<24}{_f(row['ratio'], 6, '.2f')}  "
                 f"{'<= ' + format(TARGET_RATIO, 'g') + ' ' + _pf(row['pass_ratio']):<11}"
                 f"{_f(s['cpu_p50_ms'], 10)}{_f(w['cpu_p50_ms'], 8)}{_f(row['cpu_ratio'], 7, '.2f')}")
        for note in r.get("skipped", []):
            say(f"  {name:<11}  skipped: {note}")
        if r.get("cpu_cores"):
            say(f"  {'':<11}  cores busy meanwhile: "
                 + ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_cores"].items())
                 + f"; load average {r['load_avg'][0]:.1f} on {results['cores']} cores")
    pg = backends.get("postgresql", {}).get("stitch", {}).get("1000")
    if pg:
        say(f"  PostgreSQL subscribe with a 1,000-event history: p50 {pg['stitch']['p50_ms']:.1f} ms "
             f"(target < {TARGET_PG_1K_MS:g} ms): {_pf(pg['pass_latency'])}")
    else:
        say("  PostgreSQL subscribe with a 1,000-event history: not measured: FAIL")
    say()
    say(f"  Add/update POST /api/v1/contact, {CONCURRENCY} in flight (up to {CONTACTS} contacts, "
         f"{THROUGHPUT_SECONDS:g} s per phase); CPU ms per request by process")
    say(f"  {'backend':<11}{'contacts':<10}{'req/s':>7}{'p50 ms':>8}{'p99 ms':>8}  {'CPU ms/request':<40}statuses")
    for name, r in backends.items():
        au = r.get("add_update")
        if not au:
            continue
        for kind in ("new", "existing"):
            x = au[kind]
            cpu = ", ".join(f"{k} {v:.1f}" for k, v in x["cpu_ms_per_request"].items() if v >= 0.05)
            say(f"  {name:<11}{kind:<10}{x['rps']:>7.1f}{_f(x['p50_ms'], 8)}{_f(x['p99_ms'], 8)}  {cpu:<40}"
                 f"{x['statuses']}" + (f"  e.g. {x['errors'][0]}" if x["errors"] else ""))
    pg = backends.get("postgresql", {}).get("add_update")
    if pg:
        for kind in ("new", "existing"):
            x = pg[kind]
            say(f"  PostgreSQL add/update ({kind}): {x['rps']:.0f} req/s = {x['rps_ratio_to_target']:.2f} of the "
                 f"target {TARGET_ADD_UPDATE_RPS:,.0f}; service CPU "
                 f"{_f(x['cpu_ms_per_request'].get('service'), 0, '.2f')} ms/call = "
                 f"{_f(x['service_cpu_ms_ratio_to_target'], 0, '.2f')}x the target <= {TARGET_ADD_UPDATE_CPU_MS:g} ms: "
                 f"{_pf(x['pass_target'])}")
    else:
        say("  PostgreSQL add/update: not measured: FAIL")
    say(f"\n  overall: {_pf(results['pass'])} ({results['elapsed_s']} s)")


def main() -> dict[str, Any]:
    started = time.monotonic()
    inprocess = os.environ.get("BENCH_STITCH_INPROCESS", "") not in ("", "0")
    results: dict[str, Any] = {
        "runs": RUNS, "sizes": list(SIZES), "cores": os.cpu_count(),
        "targets": {"ratio": TARGET_RATIO, "pg_1000_p50_ms": TARGET_PG_1K_MS,
                    "pg_add_update_rps": TARGET_ADD_UPDATE_RPS,
                    "pg_add_update_service_cpu_ms": TARGET_ADD_UPDATE_CPU_MS}, "backends": {},
    }
    tmp = Path(tempfile.mkdtemp(prefix="stitcher-bench-stitch-"))
    keep = os.environ.get("BENCH_KEEP_TMP") == "1"
    backends = ("sqlite", "postgresql")
    try:
        with Children() as children:
            say("   starting redis-server ...")
            redis_child, redis_url = start_redis(children, tmp)
            for i, backend in enumerate(backends):
                left = started + TIME_BUDGET_S - time.monotonic()
                deadline = time.monotonic() + left / (len(backends) - i)  # an equal share of what is left
                say(f"   {backend}:")
                try:
                    results["backends"][backend] = run_backend(backend, children, tmp, redis_child, redis_url,
                                                               deadline, inprocess)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # report, keep going with the other backend
                    say(f"      !! {type(exc).__name__}: {str(exc)[:500]}")
                    results["backends"][backend] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
    finally:
        if keep:
            say(f"   kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    checks: list[bool] = []
    for r in results["backends"].values():
        if "error" in r:
            checks.append(False)
            continue
        for row in r["stitch"].values():
            checks.append(row["pass_ratio"])
            if "pass_latency" in row:
                checks.append(row["pass_latency"])
        checks.append(not r.get("skipped"))
    checks.append("1000" in results["backends"].get("postgresql", {}).get("stitch", {}))
    pg_add_update = results["backends"].get("postgresql", {}).get("add_update") or {}
    checks.extend(pg_add_update.get(kind, {}).get("pass_target", False) for kind in ("new", "existing"))
    results["pass"] = all(checks)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    report(results)
    return results


if __name__ == "__main__":
    main()
