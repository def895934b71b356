"""The messages service's resources, opened and closed with the application."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from stitcher.http_input import DB
from stitcher.messages.handlers import MESSAGES
from stitcher.messages.service import MessageService


async def messages_ctx(app: web.Application) -> AsyncIterator[None]:
    """The send service (after ``app[DB]`` exists: registered after the stitcher's own context)."""
    app[MESSAGES] = MessageService(app[DB])
    yield
