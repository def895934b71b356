"""The edge against hostile or unusual clients (``tracker.edge``), over raw sockets, with the fixtures and
helpers of ``test_edge.py``: ordering of interim answers, HTTP/1.0 keep-alive, clients that never read,
oversized heads and bodies split into many pieces."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiohttp import web

from tests.integration.test_edge import Conn, beacon_body, connect, edge, get, post_t  # noqa: F401
from tracker.answers import Answer
from tracker.routes import TRACKING


@pytest.fixture
def held(edge: tuple[web.AppRunner, int]) -> asyncio.Event:  # noqa: F811
    """Beacons are stored at once but answered only once the event is set (a slow Redis, seen by the edge)."""
    tracking = edge[0].app[TRACKING]
    release = asyncio.Event()
    beacon = tracking.beacon

    def slow_beacon(headers, body, secure, started, done: Answer) -> None:  # type: ignore[no-untyped-def]
        async def later(reply) -> None:  # type: ignore[no-untyped-def]
            await release.wait()
            done(reply)

        beacon(headers, body, secure, started, lambda reply: asyncio.ensure_future(later(reply)))

    tracking.beacon = slow_beacon  # type: ignore[method-assign]
    return release


async def test_100_continue_waits_for_the_answers_before_it(connect, held: asyncio.Event) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """An interim answer belongs to the request being answered: it may not overtake an earlier request's."""
    conn = await connect()
    conn.send(post_t(beacon_body(str(uuid.uuid4())), "X-Request-Id: first"))
    await conn.writer.drain()
    await asyncio.sleep(0.1)
    body = beacon_body(str(uuid.uuid4()))
    head, _, _ = post_t(body, "Expect: 100-continue", "X-Request-Id: second").partition(b"\r\n\r\n")
    conn.send(head + b"\r\n\r\n")
    await conn.writer.drain()
    await asyncio.sleep(0.1)
    held.set()
    first, cont = await conn.answers(2)
    assert (first.status, first.headers["x-request-id"]) == (204, "first") and cont.status == 100
    conn.send(body)
    answers = await conn.answers(1)
    assert [(a.status, a.headers.get("x-request-id")) for a in answers] == [(204, "second")]


async def test_http_1_0_keep_alive_is_confirmed(connect) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """An HTTP/1.0 client keeps the connection only if the answer says ``Connection: keep-alive`` (as aiohttp
    answers it)."""
    conn = await connect()
    for path in ("/t.js", "/t.js"):
        conn.send(get(path, "Connection: keep-alive", version="1.0"))
        [answer] = await conn.answers(1)
        assert answer.status == 200 and answer.headers["connection"] == "keep-alive"
    conn.send(post_t(beacon_body(str(uuid.uuid4())), "Connection: keep-alive", version="1.0"))
    [answer] = await conn.answers(1)
    assert answer.status == 204 and answer.headers["connection"] == "keep-alive"
