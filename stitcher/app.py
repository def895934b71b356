"""The whole service: the tracker's routes plus the contacts API, the stitch and its worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from stitcher import account, http_errors
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
from stitcher.messages import handlers as messages
from stitcher.messages.setup import messages_ctx
from stitcher.orders.api import ORDERS
from stitcher.orders.api import routes as order_routes
from stitcher.orders.service import OrderService
from stitcher.stitch import Stitcher
from stitcher.store.db import Contention, Database, SqlOutage
from stitcher.worker import Worker
from tracker.app import connect_redis
from tracker.app import init_app as init_tracker
from tracker.eventlog import EventLog
from tracker.http import ERROR_STATUS, METRICS, UNAVAILABLE
from tracker.routes import EVENTLOG, READY_CHECKS, SETTINGS
from tracker.settings import Settings
from tracker.tasks import stop_task

WORKER = web.AppKey("worker", Worker)
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
    app.add_routes(routes)
    app.add_routes(events.routes)
    app.add_routes(account.routes)
    app.add_routes(imports.routes)
    app.add_routes(order_routes)
    app.add_routes(groups.routes)
    app.add_routes(messages.routes)
    app.cleanup_ctx.append(messages_ctx)
    console.setup(app)
    return app


def normaliser(settings: Settings) -> Normaliser:
    """The identifier normaliser with the configured placeholders and phone region, handed in as values."""
    if settings.placeholders is None:
        return Normaliser(default_region=settings.default_phone_region)
    return Normaliser(placeholders=frozenset(settings.placeholders), default_region=settings.default_phone_region)


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
    # the worker blocks on XREADGROUP: its own connection, with a socket timeout longer than the block
    worker_redis = connect_redis(settings.redis_url or "", timeout=5.0)
    worker_log = EventLog(worker_redis, partitions=settings.partitions, anon_ttl_seconds=settings.anon_ttl_seconds,
                          history_cap=settings.history_cap)
    worker = Worker(db, worker_log, stitcher, app[METRICS], receipt_ttl_ms=settings.send_receipt_ttl_ms)
    app[WORKER] = worker
    task = asyncio.create_task(worker.run(), name="stitcher-worker") if settings.worker_enabled else None
    yield
    worker.stopping.set()
    if task is not None:
        # let the worker finish the batch it is writing (a cancel would leave its query running on a thread
        # of the SQLite driver after the loop closes); cancel only what outlives the grace
        await asyncio.wait({task}, timeout=STOP_GRACE_S)
        await stop_task(task)
    await importer.close()
    await worker_redis.aclose()
    await db.close()
