"""aiohttp's TestServer with the edge in front (``tracker.edge``): test clients reach the service as
``stitcher serve`` serves it, the tracking routes answered by the edge and the rest handed to aiohttp."""

from __future__ import annotations

from typing import Any
from unittest import mock

from aiohttp.test_utils import TestServer

from tracker.edge.site import EdgeSockSite


class EdgeTestServer(TestServer):
    async def start_server(self, loop: Any = None, **kwargs: Any) -> None:
        with mock.patch("aiohttp.test_utils.SockSite", EdgeSockSite):  # the one site start_server makes
            await super().start_server(loop, **kwargs)
