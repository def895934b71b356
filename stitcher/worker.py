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
from collections.abc import Coroutine
from typing import Any, TypeVar

import orjson
import structlog
from sqlalchemy.exc import DataError, DBAPIError, StatementError

from stitcher.lease import Lease
from stitcher.stitch import Stitcher, insert_timeline, web_rows
from stitcher.store import held_events, identity_keys, messages, repo
from stitcher.store.db import Database
from stitcher.store.models import VisitorLink
from tracker.eventlog import EventLog, LinkedEvent
from tracker.metrics import Metrics

log = structlog.get_logger("worker")
T = TypeVar("T")
RECLAIM_IDLE_MS = 30_000
HOUSEKEEPING_S = 10.0


class _Stopped(Exception):
    """The worker was asked to stop while it waited on Redis."""


class Worker:
    def __init__(self, db: Database, eventlog: EventLog, stitcher: Stitcher, metrics: Metrics, *,
                 receipt_ttl_ms: int = 7 * 86_400_000, leader: Lease | None = None) -> None:
        self.db = db
        self.leader = leader  # None: this process sweeps; else (after its first sweep) while it holds this lease
        self.receipt_ttl_ms = receipt_ttl_ms
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
                    await self._redis(self.eventlog.ensure_group())
                    started = True
                if time.monotonic() >= next_housekeeping:
                    first = next_housekeeping == 0.0
                    next_housekeeping = time.monotonic() + HOUSEKEEPING_S  # a failing one must not starve draining
                    # the first sweep (every interrupted stitch, at start-up) in every process, as it restarts
                    # after a crash before its old lease runs out; later ones only in the lease's holder
                    if first or self.leader is None or self.leader.held:
                        await self.housekeeping(first=first)
                if own_pending:
                    await self.drain(await self._redis(
                        self.eventlog.read_linked(self.consumer, block_ms=None, pending=True)))
                    own_pending = False
                await self.drain(await self._redis(self.eventlog.read_linked(self.consumer, block_ms=500)))
            except _Stopped:
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker iteration failed; retrying")
                own_pending = True
                # a Redis (or cluster node) that came back empty lost the consumer groups: make them again
                # (idempotent), or every later read fails with NOGROUP
                started = False
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), 1.0)

    async def _redis(self, call: Coroutine[Any, Any, T]) -> T:
        """Await a Redis call, unless the worker is asked to stop first: then the call is abandoned (its
        connection dropped) and ``_Stopped`` raised. SQL work is never cut off like this, so a stop waits for
        the current batch to commit instead of leaving a query running after the loop has closed."""
        calling = asyncio.ensure_future(call)
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({calling, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not calling.done():
                calling.cancel()
                await asyncio.wait({calling})
        if calling.cancelled():
            raise _Stopped
        return calling.result()

    async def housekeeping(self, first: bool = False) -> None:
        """Finish interrupted stitches, take over a dead worker's unacknowledged entries, delete API events
        held past their time (and receipts past their resend window) and the receipts of idempotent sends
        older than ``receipt_ttl_ms``; and, after a restart of Redis, give it back the links it lost."""
        finished = await self.stitcher.finish_pending(older_than_ms=0 if first else RECLAIM_IDLE_MS)
        if finished:
            log.info("finished interrupted stitches", count=finished)
        await self.reseed_links()
        await self.drain(await self._redis(self.eventlog.reclaim_linked(self.consumer, RECLAIM_IDLE_MS)))
        expired = await held_events.expire(self.db)
        if expired:
            log.info("expired held API events and receipts", count=expired)
        pruned = await messages.prune_receipts(self.db, repo.now_ms() - self.receipt_ttl_ms)
        if pruned:
            log.info("pruned send receipts", count=pruned)

    async def reseed_links(self) -> None:
        """Once per Redis server run (``LINKS_SEEDED`` holds the run id last seeded): re-create the visitor links
        Redis lost from SQL's open links. Marked done only when every stitch it ran succeeded, and for the run
        id read before it started, so a restart during the pass makes the next sweep run it again."""
        run_id = await self._redis(self.eventlog.server_run_id())
        if await self._redis(self.eventlog.links_seeded_for()) == run_id:
            return
        relinked, failed = await self.stitcher.reseed_links()
        if relinked or failed:
            log.info("re-seeded visitor links from SQL", relinked=relinked, failed=failed)
        if not failed:
            await self._redis(self.eventlog.mark_links_seeded(run_id))

    async def drain(self, events: list[LinkedEvent]) -> int:
        """Put a batch of linked events on their contacts' timelines, then acknowledge them.

        If the batch fails, each event is tried alone. Only an event that fails alone because of what it
        holds (``is_poison``) is recorded in the rejected-events stream, with its JSON and reason, and
        acknowledged, so it cannot stop the worker; any other error (an outage, a deadlock, a restart of
        the database) leaves the whole batch pending for the next try — a transient error never drops one.
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
                except Exception as exc:
                    if not is_poison(exc):
                        raise  # not the event's fault: keep it pending, the loop retries it
                    log.error("linked event rejected", reason=type(exc).__name__, contact=event.contact_id)
                    await self.eventlog.record_rejected(event.vid, [{
                        "id": str(event.event.get("id", ""))[:64],
                        "reason": f"timeline insert failed: {type(exc).__name__}",
                        "event": orjson.dumps(event.event).decode()}])
        await self.eventlog.ack_linked(events)
        self.metrics.drained.inc(len(events))
        return len(events)

    async def _insert(self, events: list[LinkedEvent]) -> None:
        async with self.db.transaction() as s:
            # a merge of these visitors' contact waits for this insert (it locks the same keys)
            await self.db.lock_keys(s, [identity_keys.visitor(e.vid) for e in events])
            owners = await repo.open_links(s, {e.vid for e in events})
            by_contact: dict[int, list[LinkedEvent]] = defaultdict(list)
            for e in events:
                by_contact[_owner(e, owners)].append(e)
            for contact_id, items in by_contact.items():
                contact = await repo.resolve_merged(s, contact_id)
                if contact is None or contact.id is None:
                    continue  # erased: the events go with the person
                rows = []
                for item in items:
                    rows += web_rows(contact.id, item.vid, [item.event])
                await insert_timeline(self.db, s, rows)


def _owner(event: LinkedEvent, links: list[VisitorLink]) -> int:
    """Whose timeline a linked event belongs on.

    The stream entry names the contact Redis linked the visitor to when the beacon arrived. A re-link (a
    shared browser changing hands) commits in SQL before its stitch moves the Redis link, so an event
    received after the SQL link to someone else was made is theirs, even if Redis still named the earlier
    owner: no beacon after a re-link reaches the previous person.
    """
    for link in links:
        if link.visitor_id == event.vid and link.contact_id != event.contact_id \
                and int(event.event.get("rt", 0)) >= link.linked_at:
            return link.contact_id
    return event.contact_id


def is_poison(exc: BaseException) -> bool:
    """Whether an event failed because of its own content (bad values), not because of the database's
    state: only such an event may be set aside."""
    if isinstance(exc, DBAPIError):
        # SQLSTATE class 22 (data exception) or 54 (a value past a limit of the server): the row itself
        state = str(getattr(exc.orig, "sqlstate", "") or "")
        return isinstance(exc, DataError) or state[:2] in ("22", "54")
    return isinstance(exc, KeyError | ValueError | TypeError | StatementError)
