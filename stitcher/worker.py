"""The stitcher worker: puts linked visitors' new beacons on their contacts' timelines, within about a second.

It reads the partition streams with a consumer group (at-least-once), inserts idempotently (so exactly once
on the timeline), and acknowledges after the commit. Entries a dead worker read but never acknowledged are
taken over after ``RECLAIM_IDLE_MS``; stitches a crash left unfinished are completed by the sweeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import defaultdict

import structlog
from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from stitcher.stitch import Stitcher, insert_timeline, web_rows
from stitcher.store import repo
from stitcher.store.db import Database
from tracker.eventlog import EventLog, LinkedEvent
from tracker.metrics import Metrics

log = structlog.get_logger("worker")
OUTAGE = (OperationalError, InterfaceError, PoolTimeout, OSError, RedisError)
RECLAIM_IDLE_MS = 30_000
HOUSEKEEPING_S = 10.0


class Worker:
    def __init__(self, db: Database, eventlog: EventLog, stitcher: Stitcher, metrics: Metrics) -> None:
        self.db = db
        self.eventlog = eventlog
        self.stitcher = stitcher
        self.metrics = metrics
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        """Loop until stopped; Redis or SQL outages are logged and retried, never fatal."""
        started = False
        own_pending = True  # first (and after an error) re-read entries this consumer took but never acked
        next_housekeeping = 0.0
        while not self.stopping.is_set():
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # a cancel that redis-py's wait_for swallowed on Python 3.11 still stops the loop
                raise asyncio.CancelledError
            try:
                if not started:
                    await self.eventlog.ensure_group()
                    started = True
                if time.monotonic() >= next_housekeeping:
                    first = next_housekeeping == 0.0
                    next_housekeeping = time.monotonic() + HOUSEKEEPING_S  # a failing one must not starve draining
                    await self.housekeeping(first=first)
                if own_pending:
                    await self.drain(await self.eventlog.read_linked(self.consumer, block_ms=None, pending=True))
                    own_pending = False
                await self.drain(await self.eventlog.read_linked(self.consumer, block_ms=500))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker iteration failed; retrying")
                own_pending = True
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), 1.0)

    async def housekeeping(self, first: bool = False) -> None:
        """Finish interrupted stitches and take over a dead worker's unacknowledged entries."""
        finished = await self.stitcher.finish_pending(older_than_ms=0 if first else RECLAIM_IDLE_MS)
        if finished:
            log.info("finished interrupted stitches", count=finished)
        await self.drain(await self.eventlog.reclaim_linked(self.consumer, RECLAIM_IDLE_MS))

    async def drain(self, events: list[LinkedEvent]) -> int:
        """Put a batch of linked events on their contacts' timelines, then acknowledge them.

        If the batch fails, each event is tried alone; one that fails alone (a poison entry) is recorded in
        the rejected-events stream with its reason and acknowledged, so it cannot stop the worker.
        """
        if not events:
            return 0
        try:
            await self._insert(events)
        except Exception:
            log.warning("linked batch failed; retrying its events one by one", events=len(events))
            for event in events:
                try:
                    await self._insert([event])
                except OUTAGE:
                    raise  # the database is unreachable, not the event bad: keep it pending, retry later
                except Exception as exc:
                    log.error("linked event rejected", reason=type(exc).__name__, contact=event.contact_id)
                    await self.eventlog.record_rejected(event.vid, [{
                        "id": str(event.event.get("id", ""))[:64], "reason": f"timeline insert failed: "
                        f"{type(exc).__name__}", "event": ""}])
        await self.eventlog.ack_linked(events)
        self.metrics.drained.inc(len(events))
        return len(events)

    async def _insert(self, events: list[LinkedEvent]) -> None:
        by_contact: dict[int, list[LinkedEvent]] = defaultdict(list)
        for e in events:
            by_contact[e.contact_id].append(e)
        async with self.db.transaction() as s:
            # a merge of these visitors' contact waits for this insert (it locks the same keys)
            await self.db.lock_keys(s, [f"vid:{e.vid}" for e in events])
            for contact_id, items in by_contact.items():
                contact = await repo.resolve_merged(s, contact_id)
                if contact is None or contact.id is None:
                    continue  # erased: the events go with the person
                rows = []
                for item in items:
                    rows += web_rows(contact.id, item.vid, [item.event])
                await insert_timeline(self.db, s, rows)
