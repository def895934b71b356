"""The edge as aiohttp sites, and ``run``: ``stitcher serve`` with the edge in front of the application.

An ``EdgeSite`` listens like aiohttp's ``TCPSite`` (``EdgeSockSite`` like its ``SockSite``, for tests), but
each connection starts with ``EdgeProtocol``, which hands it to the runner's aiohttp server for any request
that is not a tracking route. Stopping a site stops its listener, closes its idle connections, lets the busy
ones answer what they hold (up to ``STOP_GRACE_SECONDS``) and then lets aiohttp stop the connections it was
handed — before the application's cleanup closes Redis.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from aiohttp import web
from aiohttp.web_runner import GracefulExit

from tracker.connection import json_errors
from tracker.edge.protocol import Connections, EdgeProtocol
from tracker.routes import TRACKING

STOP_GRACE_SECONDS = 5.0
SWEEP_SECONDS = 1.0


class _Edge:
    """What both sites share: the protocol factory, the connections and their sweeper."""

    def __init__(self, runner: web.BaseRunner, secure: bool) -> None:
        app = runner.app if isinstance(runner, web.AppRunner) else None
        if app is None or TRACKING not in app:
            raise RuntimeError("the edge serves an application built by tracker.app.init_app, after runner.setup()")
        assert runner.server is not None
        fallback = json_errors(runner.server)  # what aiohttp's parser refuses is answered as JSON too
        tracking = app[TRACKING]
        self.connections = Connections()
        self.factory: Callable[[], EdgeProtocol] = lambda: EdgeProtocol(tracking, fallback, self.connections,
                                                                         secure)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="edge-sweep")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.monotonic()
            for connection in self.connections:
                connection.sweep(now)

    async def stop(self) -> None:
        self._sweeper.cancel()
        with suppress(asyncio.CancelledError):
            await self._sweeper
        for connection in self.connections:
            connection.shut_down()
        with suppress(TimeoutError):
            await asyncio.wait_for(self.connections.empty.wait(), STOP_GRACE_SECONDS)


class EdgeSite(web.TCPSite):
    """``TCPSite`` with the edge in front."""

    async def start(self) -> None:
        await web.BaseSite.start(self)
        self._edge = _Edge(self._runner, self._ssl_context is not None)
        self._server = await asyncio.get_running_loop().create_server(
            self._edge.factory, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._edge.stop()
        await super().stop()


class EdgeSockSite(web.SockSite):
    """``SockSite`` (a socket already bound) with the edge in front."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, **kwargs: Any) -> None:
        super().__init__(runner, sock, **kwargs)

    async def start(self) -> None:
        await web.BaseSite.start(self)
        self._edge = _Edge(self._runner, self._ssl_context is not None)
        self._server = await asyncio.get_running_loop().create_server(
            self._edge.factory, sock=self._sock, ssl=self._ssl_context, backlog=self._backlog)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._edge.stop()
        await super().stop()


def run(app: web.Application, *, host: str, port: int, reuse_port: bool, loop: asyncio.AbstractEventLoop,
        shutdown_timeout: float = 60.0) -> None:
    """``web.run_app`` with an ``EdgeSite``: serve until SIGINT or SIGTERM, then stop gracefully."""

    async def serve() -> None:
        runner = web.AppRunner(app, handle_signals=True, access_log=None, shutdown_timeout=shutdown_timeout)
        await runner.setup()
        try:
            await EdgeSite(runner, host, port, reuse_port=reuse_port).start()
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.set_event_loop(loop)
    task = loop.create_task(serve())
    try:
        loop.run_until_complete(task)
    except (GracefulExit, KeyboardInterrupt):
        pass
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError, GracefulExit):
            loop.run_until_complete(task)
        for pending in asyncio.all_tasks(loop):
            pending.cancel()
        loop.run_until_complete(asyncio.gather(*asyncio.all_tasks(loop), return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
