"""The messages service's resources, opened and closed with the application."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from stitcher.http_input import DB
from stitcher.messages.delivery import Delivery
from stitcher.messages.handlers import MESSAGES
from stitcher.messages.service import MessageService
from tracker.routes import SETTINGS
from tracker.tasks import stop_task

DELIVERY = web.AppKey("delivery", Delivery)
STOP_GRACE_S = 5.0


async def messages_ctx(app: web.Application) -> AsyncIterator[None]:
    """The send service and, with ``SMTP_URL`` or ``SMS_WEBHOOK_URL`` set and the worker enabled, the delivery
    worker (registered after the stitcher's own context, whose ``app[DB]`` it uses)."""
    settings = app[SETTINGS]
    app[MESSAGES] = MessageService(app[DB])
    delivery = app[DELIVERY] = Delivery(app[DB], settings.smtp_url, settings.sms_webhook_url)
    task = (asyncio.create_task(delivery.run(), name="stitcher-delivery")
            if settings.worker_enabled and delivery.channels else None)
    yield
    delivery.stopping.set()
    if task is not None:  # let a round finish writing its outcomes; cancel only what outlives the grace
        await asyncio.wait({task}, timeout=STOP_GRACE_S)
        await stop_task(task)
    await delivery.close()
