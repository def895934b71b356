"""The whole service: the tracker's routes plus the contacts API, the stitch and its worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from stitcher import account, http_errors, identify, openapi
from stitcher.api import CONTACTS, routes
from stitcher.console import handlers as console
from stitcher.contacts import ContactService
from stitcher.domain.identifiers import Normaliser
from stitcher.events import handlers as events
from stitcher.events.service import EventService
from stitcher.groups import handlers as groups
from stitcher.http_input import DB, NORMALISER
from stitcher.imports import handlers as imports
from stitcher.imports.runner import ImportRunner
from stitcher.lease import Lease
from stitcher.messages import handlers as messages
from stitcher.messages.setup import messages_ctx
from stitcher.orders.api import ORDERS
from stitcher.orders.api import routes as order_routes
from stitcher.orders.service import OrderService
from stitcher.stitch import Stitcher
from stitcher.store.db import Contention, Database, SqlOutage
from stitcher.worker import Worker
from tracker import keys
from tracker.app import init_app as init_tracker
from tracker.eventlog import EventLog
from tracker.http import ERROR_STATUS, METRICS, UNAVAILABLE
from tracker.redis_client import connect_redis, is_cluster
from tracker.resp_cluster import ClusterRespConnection
from tracker.routes import EVENTLOG, READY_CHECKS, SETTINGS
from tracker.settings import Settings
from tracker.tasks import stop_task

WORKER = web.AppKey("worker", Worker)
SWEEPER_LEASE = web.AppKey("sweeper_lease", Lease)
STOP_GRACE_S = 5.0


def init_app(settings: Settings) -> web.Application:
    """Build the application; every resource is opened and closed in ``cleanup_ctx``.

    The schema must be current (``stitcher db upgrade``; ``serve`` runs it first).
    """
    app = init_tracker(settings)
    app[NORMALISER] = normaliser(settings)
    statuses: dict[type[Exception], int] = app[ERROR_STATUS]
    app[ERROR_STATUS] = statuses | http_errors.STATUS
    app[UNAVAILABLE] = (*app[UNAVAILABLE], OperationalError, InterfaceError, PoolTimeout, Contention, SqlOutage)
    app.cleanup_ctx.append(_stitcher_ctx)
    app.cleanup_ctx.append(identify.identify_ctx)  # after: it uses the contacts service
    app.add_routes(routes)
    app.add_routes(events.routes)
    app.add_routes(account.routes)
    app.add_routes(imports.routes)
    app.add_routes(order_routes)
    app.add_routes(groups.routes)
    app.add_routes(messages.routes)
    app.add_routes(openapi.routes)
    app.cleanup_ctx.append(messages_ctx)
    console.setup(app)
    return app


def normaliser(settings: Settings) -> Normaliser:
    """The identifier normaliser with the configured placeholders and phone region, handed in as values."""
    if settings.placeholders is None:
        return Normaliser(default_region=settings.default_phone_region)
    return Normaliser(placeholders=frozenset(settings.placeholders), default_region=settings.default_phone_region)


def worker_eventlog(settings: Settings) -> EventLog:
    """The worker's event log (``aclose`` it). The worker blocks on XREADGROUP: its own client, with a socket
    timeout longer than the block; a cluster's partition streams are polled node by node as RESP
    (``EventLog.read_linked``) on connections of its own."""
    url = settings.redis_url or ""
    return EventLog(connect_redis(url, timeout=5.0), partitions=settings.partitions,
                    anon_ttl_seconds=settings.anon_ttl_seconds, history_cap=settings.history_cap,
                    linked_reader=ClusterRespConnection(url, 5.0) if is_cluster(url) else None)


async def _stitcher_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    db = Database(settings.effective_database_url)
    stitcher = Stitcher(db, app[EVENTLOG], pause_ms=settings.stitch_pause_ms,
                        on_stitched=app[METRICS].stitched.inc)
    app[DB] = db
    app[CONTACTS] = ContactService(db, app[EVENTLOG], stitcher)
    app[events.EVENTS] = EventService(db, hold_ms=settings.held_event_ttl_ms)
    app[ORDERS] = OrderService(db)
    app[READY_CHECKS]["sql"] = db.ping
    importer = ImportRunner(db, app[NORMALISER], chunk_rows=settings.import_chunk_rows,
                            parse_workers=settings.import_parse_workers)
    app[imports.IMPORTS] = importer
    importer.start_resuming()
    worker_log = worker_eventlog(settings)
    # the drain is spread (every process is a consumer of one group); the sweeper is elected: with several
    # processes on one Redis (`serve --workers N`), the holder of this lease alone runs the housekeeping
    lease = app[SWEEPER_LEASE] = Lease(worker_log.redis, keys.lease("sweeper"))
    worker = Worker(db, worker_log, stitcher, app[METRICS], receipt_ttl_ms=settings.send_receipt_ttl_ms,
                    leader=lease)
    app[WORKER] = worker
    task = None
    if settings.worker_enabled:
        await lease.try_take()  # decided before the first sweep, which finishes every interrupted stitch
        lease.start()
        task = asyncio.create_task(worker.run(), name="stitcher-worker")
    yield
    worker.stopping.set()
    if task is not None:
        # let the worker finish the batch it is writing (a cancel would leave its query running on a thread
        # of the SQLite driver after the loop closes); cancel only what outlives the grace
        await asyncio.wait({task}, timeout=STOP_GRACE_S)
        await stop_task(task)
    await lease.stop()  # released once the sweep stopped: another process takes over at once
    await importer.close()
    await worker_log.aclose()
    await db.close()
