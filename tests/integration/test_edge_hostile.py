"""The edge against hostile or unusual clients (``tracker.edge``), over raw sockets, with the fixtures and
helpers of ``test_edge.py``: ordering of interim answers, HTTP/1.0 keep-alive, clients that never read,
oversized heads and bodies split into many pieces."""

from __future__ import annotations

import asyncio
import os
import socket
import tracemalloc
import uuid
from collections.abc import Callable

import pytest
from aiohttp import web
from redis.asyncio import Redis
from structlog.testing import capture_logs

import tracker.edge.protocol as edge_protocol
import tracker.edge.site as edge_site
from tests.integration.test_edge import (  # noqa: F401
    Conn,
    beacon_body,
    connect,
    edge,
    get,
    post_t,
    running_site,
    stored,
)
from tracker.answers import Answer
from tracker.routes import TRACKING
from tracker.settings import Settings


@pytest.fixture
def held(edge: tuple[web.AppRunner, int]) -> asyncio.Event:  # noqa: F811
    """Beacons are stored at once but answered only once the event is set (a slow Redis, seen by the edge)."""
    tracking = edge[0].app[TRACKING]
    release = asyncio.Event()
    beacon = tracking.beacon

    def slow_beacon(headers, body, secure, started, done: Answer, *client) -> None:  # type: ignore[no-untyped-def]
        async def later(reply) -> None:  # type: ignore[no-untyped-def]
            await release.wait()
            done(reply)

        beacon(headers, body, secure, started, lambda reply: asyncio.ensure_future(later(reply)), *client)

    tracking.beacon = slow_beacon  # type: ignore[method-assign]
    return release


async def test_100_continue_waits_for_the_answers_before_it(connect, held: asyncio.Event) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """An interim answer belongs to the request being answered: it may not overtake an earlier request's."""
    conn = await connect()
    body = beacon_body(str(uuid.uuid4()))
    head, _, _ = post_t(body, "Expect: 100-continue", "X-Request-Id: second").partition(b"\r\n\r\n")
    await send_apart(conn, post_t(beacon_body(str(uuid.uuid4())), "X-Request-Id: first"), head + b"\r\n\r\n")
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


async def send_apart(conn: Conn, *pieces: bytes) -> None:
    """Each piece in a packet of its own, the server given time to read it before the next."""
    for piece in pieces:
        conn.send(piece)
        await conn.writer.drain()
        await asyncio.sleep(0.05)


async def _until(condition: Callable[[], bool], within: float = 5.0) -> bool:
    """Polls a count the server keeps (nothing to wait on): raises TimeoutError if it never holds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return True


async def test_a_hand_over_waits_for_a_beacon_in_flight(connect, held: asyncio.Event) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """The next request's head arrives in three packets while the beacon is stored: answered after it."""
    conn = await connect()
    await send_apart(conn, post_t(beacon_body(str(uuid.uuid4())), "X-Request-Id: b1"), b"GET /heal",
                     b"thz HTTP/1.1\r\nHo", b"st: t\r\n\r\n")
    held.set()
    first, second = await conn.answers(2)
    assert (first.status, first.headers["x-request-id"]) == (204, "b1")
    assert second.status == 200 and second.json() == {"status": "ok", "pid": os.getpid()}


async def test_a_large_api_body_in_many_chunks_behind_a_beacon(connect, held: asyncio.Event) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """An import-sized POST to the API, head and body in many packets, behind a beacon being stored."""
    conn = await connect()
    await send_apart(conn, post_t(beacon_body(str(uuid.uuid4()))))
    body = b'{"contacts": [' + b",".join(b'{"email": "a%d@x.example"}' % i for i in range(20000)) + b"]}"
    conn.send(b"POST /api/v1/contacts/import HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body))
    for i in range(0, len(body), 4096):
        conn.send(body[i:i + 4096])
        if i == 4096 * 4:
            held.set()
        await conn.writer.drain()
    first, second = await conn.answers(2, within=10)
    assert first.status == 204 and second.status == 401


async def test_head_behind_a_beacon_in_flight(connect, held: asyncio.Event) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """HEAD is aiohttp's: handed over once the beacon before it is answered."""
    conn = await connect()
    await send_apart(conn, post_t(beacon_body(str(uuid.uuid4()))), get("/t.js", method="HEAD"))
    held.set()
    data = await conn.reader.readuntil(b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 204")
    data = await conn.reader.readuntil(b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200") and b"aiohttp" in data


async def test_a_vanished_client_leaves_no_connection(running_site) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """Its pipelined beacons are stored and nothing of it stays in the site's connections."""
    _, edge_site_ = running_site
    _, writer = await asyncio.open_connection("127.0.0.1", edge_site_.port)
    writer.write(post_t(beacon_body(str(uuid.uuid4()))) * 5)
    await writer.drain()
    await _until(lambda: len(edge_site_._edge.connections) == 1)
    writer.transport.abort()
    assert await _until(lambda: len(edge_site_._edge.connections) == 0)


async def test_a_client_that_never_reads_is_closed_in_the_end(running_site, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """It pipelines scripts and reads none: reading its requests pauses, and once it has read nothing for the
    idle time it is dropped (closing would wait forever for it to read what is buffered)."""
    monkeypatch.setattr(edge_protocol, "IDLE_SECONDS", 0.3)
    monkeypatch.setattr(edge_protocol, "REQUEST_SECONDS", 0.3)
    monkeypatch.setattr(edge_site, "SWEEP_SECONDS", 0.1)
    _, edge_site_ = running_site
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", edge_site_.port))
    sock.setblocking(False)
    sending = asyncio.ensure_future(asyncio.get_running_loop().sock_sendall(sock, get("/t.js") * 20000))
    try:
        await _until(lambda: len(edge_site_._edge.connections) == 1)
        assert await _until(lambda: len(edge_site_._edge.connections) == 0, within=10)
    finally:
        sending.cancel()
        sock.close()



async def test_a_url_longer_than_the_whole_head_limit_is_414(connect) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """Past the head's byte limit the edge refuses before it knows the route: a request line too long is a 414
    naming the line, not a 431 about headers (a shorter one to another path is aiohttp's to answer)."""
    for path in ("/t.js", "/api/v1/tracker/rejected"):
        conn = await connect()
        conn.send(get(path + "?" + "a" * (2 * 1024 * 1024)))
        [answer] = await conn.answers(1)
        assert answer.status == 414 and answer.json()["error"] == "uri_too_long"
        assert answer.headers["connection"] == "close"


class _Transport:
    """Enough of a transport to feed ``EdgeProtocol`` by hand, one call per received piece."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 50000) if name == "peername" else default


async def test_a_chunked_body_arriving_a_byte_a_time_is_413(edge: tuple[web.AppRunner, int]) -> None:  # noqa: F811
    """A body of one-byte chunks, each in a packet of its own, is counted as it grows (not re-counted whole
    per packet: 64 KiB of them cost the loop seconds) and refused once past the limit."""
    tracking = edge[0].app[TRACKING]
    protocol = edge_protocol.EdgeProtocol(tracking, web.RequestHandler, edge_protocol.Connections())
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(b"POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(tracking.limits.max_body_bytes + 1):
        protocol.data_received(b"1\r\nx\r\n")
        if transport.closed:
            break
    assert transport.written.startswith(b"HTTP/1.1 413 ") and transport.closed


@pytest.mark.parametrize("head, piece, pieces", [
    (b"GET /t.js?", b"ab", 200_000),  # a request line of 400 KB, two bytes a packet
    (b"POST /t HTTP/1.1\r\nHost: t\r\nContent-Length: 60000\r\n\r\n", b"ab", 29_000),  # a beacon's body
], ids=["url", "body"])
async def test_a_request_in_tiny_pieces_holds_little_more_than_its_bytes(
        edge: tuple[web.AppRunner, int], head: bytes, piece: bytes, pieces: int) -> None:  # noqa: F811
    """A slow client sending a request two bytes a packet: the edge holds about what it received, not an
    object per packet (some 35 bytes each: 20 MB for a 400 KB line, per connection)."""
    protocol = edge_protocol.EdgeProtocol(edge[0].app[TRACKING], web.RequestHandler, edge_protocol.Connections())
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(head)
    tracemalloc.start()
    try:
        for _ in range(pieces):
            protocol.data_received(piece)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not transport.written and held < 4 * len(piece) * pieces


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 20])
async def test_a_head_cut_anywhere_is_answered(edge: tuple[web.AppRunner, int], cut: int) -> None:  # noqa: F811
    """A head in two packets, the second holding the last ``cut`` bytes (its end split between them too)."""
    protocol = edge_protocol.EdgeProtocol(edge[0].app[TRACKING], web.RequestHandler, edge_protocol.Connections())
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    head = get("/t.js")
    protocol.data_received(head[:-cut])
    protocol.data_received(head[-cut:])
    assert transport.written.startswith(b"HTTP/1.1 200 ")


async def test_a_head_trickling_a_byte_at_a_time_still_gets_408(connect, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """Slow-loris: a byte now and then keeps the connection active, but the request must be whole within
    ``REQUEST_SECONDS`` of its first byte."""
    monkeypatch.setattr(edge_protocol, "REQUEST_SECONDS", 0.3)
    monkeypatch.setattr(edge_site, "SWEEP_SECONDS", 0.1)
    conn = await connect()
    conn.send(b"POST /t HTTP/1.1\r\nHost: t\r\nX-Slow: ")

    async def trickle() -> None:
        while True:
            conn.send(b"a")
            await asyncio.sleep(0.05)

    trickling = asyncio.ensure_future(trickle())
    try:
        [answer] = await conn.answers(1, within=5)
    finally:
        trickling.cancel()
    assert answer.status == 408 and answer.json()["error"] == "request_timeout"


async def test_requests_pipelined_after_connection_close_are_dropped_quietly(  # type: ignore[no-untyped-def]
        connect, redis_client: Redis, tracker_settings: Settings) -> None:  # noqa: F811
    """The answers up to the request that said ``Connection: close``, then the close; what followed it is
    neither stored nor logged as a malformed request (it is not: the client only sent it too early)."""
    vid = str(uuid.uuid4())
    conn = await connect()
    with capture_logs() as logs:
        conn.send(post_t(beacon_body(vid, "a")) + post_t(beacon_body(vid, "b"), "Connection: close")
                  + post_t(beacon_body(vid, "c")))
        answers = await conn.answers(3)
        assert [(a.status, a.headers.get("connection")) for a in answers] == [(204, None), (204, "close")]
        assert await conn.closed()
    assert [e["id"] for e in await stored(redis_client, tracker_settings, vid)] == ["a", "b"]
    assert not [e for e in logs if e["log_level"] != "info"]


async def test_a_header_in_two_cases_counts_by_the_first(connect) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """``X-Request-Id`` then ``x-request-id``: the first, as aiohttp's ``headers.get`` reads it."""
    conn = await connect()
    conn.send(post_t(beacon_body(str(uuid.uuid4())), "X-Request-Id: one", "x-request-id: two", "X-REQUEST-ID: 3"))
    [answer] = await conn.answers(1)
    assert answer.status == 204 and answer.headers["x-request-id"] == "one"


class _Recorder(asyncio.Protocol):
    """Stands in for aiohttp's request handler at a hand-over: what it was told, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.calls.append("connection_made")

    def pause_writing(self) -> None:
        self.calls.append("pause_writing")

    def data_received(self, data: bytes) -> None:
        self.calls.append("data_received")


async def test_a_hand_over_while_writing_is_paused_tells_aiohttp(edge: tuple[web.AppRunner, int]) -> None:  # noqa: F811
    """The transport pauses a protocol once: handed a connection whose client reads nothing, aiohttp must
    know its writes are paused, or it would buffer whatever it answers (an export) without bound."""
    handler = _Recorder()
    protocol = edge_protocol.EdgeProtocol(edge[0].app[TRACKING], lambda: handler, edge_protocol.Connections())
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.pause_writing()
    protocol.data_received(get("/api/v1/tracker/rejected"))
    assert handler.calls == ["connection_made", "pause_writing", "data_received"]
