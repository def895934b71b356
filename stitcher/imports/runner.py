"""Bulk imports in the background: accept, run chunk by chunk, report, and resume after a restart.

An import's request and progress live in SQL (``imports``, ``import_rows``), each chunk committing its rows
and the import's ``next_row`` together, so a process killed at any moment leaves an import that the next
start resumes at its first unapplied row (DESIGN invariant 5). The runner keeps a strong reference to every
task it starts (an unreferenced task can be garbage-collected mid-import).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import multiprocessing
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError

from stitcher import group_refs
from stitcher.domain.errors import ImportNotFound, ImportsBusy
from stitcher.domain.identifiers import Normaliser
from stitcher.imports.chunk import StaleCandidates, apply_chunk
from stitcher.imports.parse import Parsed, parse_rows, parse_slice
from stitcher.imports.request import ImportRequest
from stitcher.store import groups, import_sessions, repo
from stitcher.store.db import Database, is_outage
from stitcher.store.repo import now_ms
from tracker.tasks import stop_task

log = structlog.get_logger("imports")
CHUNK_ROWS = 1000
# identity keys a chunk's transaction may lock: two imports at a time stay well inside PostgreSQL's default
# shared lock table (6,400), beside the API's transactions
MAX_CHUNK_KEYS = 2000
RESUME_RETRY_S = 5.0
OUTAGE_RETRY_S = 0.5  # the first wait after an outage; doubled up to RESUME_RETRY_S


def outage_wait(attempt: int) -> float:
    """Seconds to wait before the ``attempt``-th retry (from 0) of an import paused by a database outage. The
    exponent is capped: 2**1024 is past a float, and an outage may outlast any number of attempts."""
    return min(OUTAGE_RETRY_S * 2.0 ** min(attempt, 16), RESUME_RETRY_S)
CONCURRENT_IMPORTS = 2  # two overlap one's SQL round trips with the other's parsing; more only queue on locks
# import bodies read and parsed at once: each costs ~45 MiB while it is (a 16 MiB body and its objects), so a
# burst of clients cannot exhaust the memory; the next one is answered 429 with Retry-After
INTAKE = 4


class ImportRunner:
    """Starts, runs and reports imports; ``start_resuming`` picks up the unfinished ones at start-up."""

    def __init__(self, db: Database, normaliser: Normaliser, *, chunk_rows: int = CHUNK_ROWS,
                 concurrency: int = CONCURRENT_IMPORTS, parse_workers: int = 0, intake: int = INTAKE) -> None:
        self.db = db
        self.normaliser = normaliser
        self.chunk_rows = max(1, chunk_rows)
        self.parse_workers = parse_workers
        self._parser: ProcessPoolExecutor | None = None  # started with the first import that needs it
        self._slots = asyncio.Semaphore(concurrency)
        self._intake, self._receiving = intake, 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: set[str] = set()  # imports this process runs: a resume scan must not start them twice

    @property
    def bodies_arriving(self) -> int:
        """How many import bodies are being read and parsed right now."""
        return self._receiving

    @contextlib.contextmanager
    def receiving(self) -> Iterator[None]:
        """A slot to read and parse one import body in; ``ImportsBusy`` (429) when all are taken."""
        if self._receiving >= self._intake:
            raise ImportsBusy(self._intake)
        self._receiving += 1
        try:
            yield
        finally:
            self._receiving -= 1

    async def submit(self, request: ImportRequest, request_id: str | None) -> str:
        """Store the import (STARTED) and start it; returns its asyncSessionId."""
        import_id = str(uuid.uuid4())
        now = now_ms()
        async with self.db.transaction() as s:
            await import_sessions.create(s, import_id, len(request.contacts), request.stored(), request_id, now)
        self._start(import_id)
        return import_id

    def start_resuming(self) -> None:
        """Resume in the background every import a previous process left unfinished, once the database
        answers: the service starts (and answers 503) while it does not."""
        self._spawn(self._resume_when_reachable(), "import-resume")

    async def _resume_when_reachable(self) -> None:
        while True:
            try:
                async with self.db.reader() as s:
                    ids = await import_sessions.unfinished(s)
                break
            except Exception as exc:  # unreachable or failing database: try again, as the API's 503 says
                log.warning("cannot read unfinished imports yet", error=type(exc).__name__)
                await asyncio.sleep(RESUME_RETRY_S)
        resumed = [i for i in ids if i not in self._running]  # one just submitted here is running already
        for import_id in resumed:
            self._start(import_id)
        if resumed:
            log.info("resuming unfinished imports", count=len(resumed))

    def _start(self, import_id: str) -> None:
        if import_id in self._running:
            return
        self._running.add(import_id)
        task = self._spawn(self._run(import_id), f"import-{import_id}")
        task.add_done_callback(lambda _task: self._running.discard(import_id))

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait(self) -> None:
        """Until every running import has ended (tests, benchmarks)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def close(self) -> None:
        """Stop the running imports; each stays where its last chunk left it and resumes on the next start."""
        for task in list(self._tasks):
            await stop_task(task)
        if self._parser is not None:
            self._parser.shutdown(wait=False, cancel_futures=True)
            self._parser = None

    async def _parse(self, request: ImportRequest, start: int) -> Parsed:
        """Rows ``[start, start + chunk_rows)`` parsed — in a parser process when ``parse_workers`` (the
        parser is most of an import's CPU: there it runs beside this process's SQL work), else here. A
        parser process that died is replaced by parsing here."""
        end = min(start + self.chunk_rows, len(request.contacts))
        if self.parse_workers > 0:
            if self._parser is None:
                self._parser = ProcessPoolExecutor(self.parse_workers, multiprocessing.get_context("spawn"))
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    self._parser, parse_slice, request.contacts[start:end], start, request.dedupe_on,
                    request.field_id, self.normaliser)
            except BrokenProcessPool:
                log.warning("import parser process died; parsing in the service process")
                self.parse_workers = 0
        parsed = parse_rows(request, start, end, self.normaliser)
        await asyncio.sleep(0)  # parsing a chunk is CPU work: let requests in between
        return parsed

    async def _run(self, import_id: str) -> None:
        """Run the import to its end; a database outage (a restart, a dropped connection) pauses it, and it
        goes on from its last committed chunk once the database answers — it never ends ``ERROR`` for that."""
        async with self._slots:
            for attempt in itertools.count():
                try:
                    return await self._run_from_last_chunk(import_id)
                except Exception as exc:
                    if not is_outage(exc):
                        raise
                    log.warning("import paused: database unavailable", import_id=import_id,
                                error=type(exc).__name__)
                    await asyncio.sleep(outage_wait(attempt))

    async def _run_from_last_chunk(self, import_id: str) -> None:
        async with self.db.reader() as s:
            row = await import_sessions.load(s, import_id)
        if row is None or row.status not in import_sessions.RUNNING:
            return  # ended meanwhile (another process), or gone with its database
        request = ImportRequest.from_stored(row.request)
        start = row.next_row
        upcoming: asyncio.Future[Parsed] | None = None
        try:
            group_ids: list[int] = []
            left_out = ""
            if request.group_names:
                group_ids, left_out = await self.db.retry(lambda: self._groups(request.group_names))
            # chunk N+1 is parsed while chunk N's SQL runs
            upcoming = asyncio.ensure_future(self._parse(request, start)) if start < row.total else None
            while upcoming is not None:
                parsed = await upcoming
                upcoming = (asyncio.ensure_future(self._parse(request, parsed.end))
                            if parsed.end < row.total else None)
                for part in parsed.split(MAX_CHUNK_KEYS):
                    if not await self.db.retry(functools.partial(
                            apply_chunk, self.db, import_id, request, part, group_ids, row.request_id),
                            also=(StaleCandidates, IntegrityError)):
                        # another runner of this import (a process resuming it while this one runs, as
                        # with `serve --workers N`) applied it, or ended it: that runner goes on alone.
                        # Going on here could end the import before the other's chunks land when the
                        # two cut their chunks at different rows.
                        if upcoming is not None:
                            upcoming.cancel()
                        log.info("import taken over by another runner", import_id=import_id)
                        return
                    start = part.end
            await self._end(import_id, "FINISHED", f"{row.total} rows processed{left_out}")
        except asyncio.CancelledError:
            if upcoming is not None:
                upcoming.cancel()
            raise
        except Exception as exc:
            if upcoming is not None:
                upcoming.cancel()
            if is_outage(exc):
                raise  # not the rows' fault: ``_run`` resumes from the last committed chunk
            log.exception("import failed", import_id=import_id)
            applied = f"rows 0-{start - 1} applied (see mapping)" if start else "no row applied"
            await self._end(import_id, "ERROR", f"{applied}; rows {start}-{row.total - 1} not applied: "
                            f"{type(exc).__name__}")

    async def _groups(self, names: tuple[str, ...]) -> tuple[list[int], str]:
        """The ids of ``groupNames`` (the static ones made when missing) and what the import's description
        says of the dynamic ones, which no row joins."""
        async with self.db.transaction() as s:
            ids = await repo.ensure_groups(self.db, s, names)
            dynamic = await groups.dynamic_names(s, names)
        return ids, "".join(f"; groupNames: {i['reason']}" for i in group_refs.left_out(names, dynamic, ""))

    async def _end(self, import_id: str, status: str, description: str) -> None:
        async def end() -> None:
            async with self.db.transaction() as s:
                await import_sessions.end(s, import_id, status, description, now_ms())
        await self.db.retry(end)

    async def status(self, import_id: str) -> dict[str, Any]:
        """The platform's import status, with the mapping of applied rows to contacts."""
        async with self.db.reader() as s:
            found = await import_sessions.report(s, import_id)
        if found is None:
            raise ImportNotFound(import_id)
        imp, rows = found
        return {
            "asyncSessionId": import_id, "status": imp.status, "description": imp.description, "total": imp.total,
            "processed": imp.next_row, "created": imp.created, "updated": imp.updated, "restored": imp.restored,
            "skipped": imp.skipped,
            "failedContacts": [{"index": r.idx, "error": r.error} for r in rows if r.action == "failed"],
            "skippedContacts": [{"index": r.idx, "contactId": r.contact_id, "reason": r.error}
                                for r in rows if r.action == "skipped"],
            "mapping": [{"index": r.idx, "contactId": r.contact_id, "action": r.action,
                         **({"ignored": [{"field": "groups", "reason": r.error}]} if r.error else {})}
                        for r in rows if r.action in ("created", "updated", "restored")],
        }
