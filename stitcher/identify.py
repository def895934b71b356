"""The stitcher's half of signed identify: links the collector verified become contact-API links.

The collector (``tracker.identify``) checks a browser's signed ``externalCustomerId`` and adds
``(visitor, external ID)`` to a Redis stream; it never touches SQL. This consumer reads that stream with a
consumer group and, for each entry, does what ``POST /api/v1/contact`` with ``{"externalCustomerId": X,
"visitorIds": [visitor]}`` does (the same parser, the same ``ContactService.upsert``, the same locks): the
contact holding X — created with only that ID when none does yet, restored if deleted — gets the visitor's
anonymous history now and its later beacons from then on; a visitor linked to someone else changes hands.
An entry is acknowledged once that is committed; a crash or an outage leaves it pending, and it is tried
again (the upsert is repeat-safe). A visitor already linked to X's live contact is acknowledged without a
write: a site may identify on every page.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import defaultdict
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from stitcher.api import CONTACTS
from stitcher.contacts import ContactService
from stitcher.domain.errors import ConcurrentUpdate, DomainError
from stitcher.domain.identifiers import Normaliser
from stitcher.domain.rules import Mode
from stitcher.http_input import DB, NORMALISER
from stitcher.payload import parse_contact
from stitcher.store import identify as store
from stitcher.store.db import Database
from tracker.identify import Identified, IdentifyLog
from tracker.redis_client import connect_redis
from tracker.routes import SETTINGS
from tracker.tasks import stop_task

log = structlog.get_logger("identify")
RECLAIM_IDLE_MS = 30_000  # a consumer that held an entry this long without acknowledging it is taken as dead
RECLAIM_EVERY_S = 10.0
PARALLEL = 8  # visitors linked at once
STOP_GRACE_S = 5.0


class IdentifyConsumer:
    def __init__(self, log_: IdentifyLog, contacts: ContactService, db: Database, normaliser: Normaliser) -> None:
        self.log = log_
        self.contacts = contacts
        self.db = db
        self.normaliser = normaliser
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        """Loop until stopped; an outage is logged and retried, never fatal, and loses no identify."""
        started = False
        own_pending = True  # first (and after an error): what this consumer was given and never acknowledged
        next_reclaim = 0.0
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            try:
                if not started:
                    await self.log.ensure_group()
                    started = True
                if loop.time() >= next_reclaim:
                    next_reclaim = loop.time() + RECLAIM_EVERY_S
                    await self.handle(await self.log.reclaim(self.consumer, RECLAIM_IDLE_MS))
                if own_pending:
                    await self.handle(await self.log.read(self.consumer, block_ms=None, pending=True))
                    own_pending = False
                await self.handle(await self.log.read(self.consumer, block_ms=500))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("identify iteration failed; retrying")
                own_pending = True
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), 1.0)

    async def handle(self, items: list[Identified]) -> None:
        """Link a batch, each identify acknowledged once done: ``PARALLEL`` visitors at a time (a link is a few
        round trips, mostly waiting), each visitor's identifies in stream order (a shared browser identified
        as A, then B, ends with B). An error leaves that visitor's rest pending and is raised after the
        others have finished."""
        by_visitor: dict[str, list[Identified]] = defaultdict(list)
        for item in items:
            by_visitor[item.vid].append(item)
        gate = asyncio.Semaphore(PARALLEL)

        async def in_order(queue: list[Identified]) -> None:
            async with gate:
                for item in queue:
                    outcome = await self.link(item)
                    await self.log.ack([item])
                    log.info("identify", outcome=outcome, request_id=item.request_id)

        results = await asyncio.gather(*(in_order(q) for q in by_visitor.values()), return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed

    async def link(self, item: Identified) -> str:
        """Link one identify as the contact API would; returns what happened (``linked``, ``already`` or
        ``refused``: an ID the API refuses, e.g. a placeholder). An outage or contention raises: retried."""
        try:
            command = parse_contact({"externalCustomerId": item.external_id, "visitorIds": [item.vid]},
                                    self.normaliser)
        except DomainError:
            return "refused"
        external_id = command.identity.external_id
        if external_id is not None and await store.already_linked(self.db, item.vid, external_id):
            return "already"
        try:
            await self.contacts.upsert(Mode.ADD_UPDATE, command, request_id=item.request_id or None)
        except ConcurrentUpdate:
            raise  # the person kept changing: try again later, as an API client would
        except DomainError:
            return "refused"
        return "linked"


CONSUMER = web.AppKey("identify_consumer", IdentifyConsumer)


async def identify_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the consumer beside the worker (``WORKER_ENABLED``) when identify is on (``IDENTIFY_SECRET``).

    Its own Redis client: it blocks on XREADGROUP, with a socket timeout longer than the block. Processes
    share the stream through the consumer group, so each identify is handled once whatever their number.
    """
    settings = app[SETTINGS]
    if not (settings.worker_enabled and settings.identify_secrets):
        yield
        return
    redis = connect_redis(settings.redis_url or "", timeout=5.0)
    consumer = app[CONSUMER] = IdentifyConsumer(IdentifyLog(redis), app[CONTACTS], app[DB], app[NORMALISER])
    task = asyncio.create_task(consumer.run(), name="identify-consumer")
    yield
    consumer.stopping.set()
    # let it finish the link it is writing (see the worker's stop); cancel only what outlives the grace
    await asyncio.wait({task}, timeout=STOP_GRACE_S)
    await stop_task(task)
    await redis.aclose()
