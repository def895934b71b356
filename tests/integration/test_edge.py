"""The edge's HTTP conformance (``tracker.edge``), over raw sockets: keep-alive, pipelining, chunked bodies,
``Expect: 100-continue``, header and body limits, slow and vanished clients, HTTP/1.0, HEAD, the hand-over to
aiohttp, malformed requests and stopping with a beacon in flight.

What the tracking routes answer (validation, cookies, CORS, errors) is tested through both fronts in
``test_tracker.py``; this is about the bytes on the wire.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httptools
import orjson
import pytest
from aiohttp import web
from redis.asyncio import Redis

import tracker.edge.protocol as edge_protocol
import tracker.edge.site as edge_site
from tracker.app import init_app
from tracker.edge.site import EdgeSite
from tracker.keys import VisitorKeys
from tracker.settings import Settings


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> dict[str, object]:
        return orjson.loads(self.body)  # type: ignore[no-any-return]


class _Reader:
    """Parses a byte stream of responses (``head`` for answers to HEAD)."""

    def __init__(self, head: bool = False) -> None:
        self.answers: list[Answer] = []
        self._parser = httptools.HttpResponseParser(self)
        self._head = head
        self._name = b""

    def on_message_begin(self) -> None:
        self.answers.append(Answer(0))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.answers[-1].headers[name.decode().lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.answers[-1].status = self._parser.get_status_code()
        if self._head or self.answers[-1].status in (100, 204, 304):
            return None

    def on_body(self, body: bytes) -> None:
        self.answers[-1].body += body

    def feed(self, data: bytes) -> None:
        self._parser.feed_data(data)


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def answers(self, n: int, within: float = 5.0) -> list[Answer]:
        """Read until ``n`` complete answers (100 Continue counts) arrived."""
        parsed = _Reader()
        received = b""
        async with asyncio.timeout(within):
            while True:
                data = await self.reader.read(65536)
                if data:
                    received += data
                    parsed = _Reader()
                    _feed_all(parsed, received)
                complete = [a for a in parsed.answers if a.status]
                if len(complete) >= n and _complete(received, n):
                    return parsed.answers[:n]
                if not data:
                    return parsed.answers

    async def closed(self, within: float = 5.0) -> bool:
        """Whether the server closes the connection (reads to EOF, dropping what arrives)."""
        try:
            async with asyncio.timeout(within):
                while await self.reader.read(65536):
                    pass
            return True
        except (TimeoutError, ConnectionResetError):
            return False

    def close(self) -> None:
        self.writer.close()


def _feed_all(reader: _Reader, data: bytes) -> None:
    try:
        reader.feed(data)
    except httptools.HttpParserError:
        pass


def _complete(received: bytes, n: int) -> bool:
    """Whether ``received`` holds ``n`` whole responses (bodies by Content-Length)."""
    rest = received
    for _ in range(n):
        head, sep, rest = rest.partition(b"\r\n\r\n")
        if not sep:
            return False
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(rest) < length:
            return False
        rest = rest[length:]
    return True


def beacon_body(vid: str, event_id: str | None = None) -> bytes:
    return orjson.dumps({"vid": vid, "events": [{"id": event_id or str(uuid.uuid4()), "type": "page_view"}]})


def post_t(body: bytes, *extra: str, version: str = "1.1") -> bytes:
    head = [f"POST /t HTTP/{version}", "Host: test", "Content-Type: text/plain", f"Content-Length: {len(body)}",
            *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def get(path: str, *extra: str, method: str = "GET", version: str = "1.1") -> bytes:
    return ("\r\n".join([f"{method} {path} HTTP/{version}", "Host: test", *extra]) + "\r\n\r\n").encode()


@pytest.fixture
async def running_site(tracker_settings: Settings) -> AsyncIterator[tuple[web.AppRunner, EdgeSite]]:
    runner = web.AppRunner(init_app(tracker_settings), access_log=None, shutdown_timeout=2)
    await runner.setup()
    site = EdgeSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner, site
    await runner.cleanup()


@pytest.fixture
def edge(running_site: tuple[web.AppRunner, EdgeSite]) -> tuple[web.AppRunner, int]:
    return running_site[0], running_site[1].port


@pytest.fixture
async def connect(edge: tuple[web.AppRunner, int]) -> AsyncIterator[object]:
    opened: list[Conn] = []

    async def open_() -> Conn:
        conn = Conn(*await asyncio.open_connection("127.0.0.1", edge[1]))
        opened.append(conn)
        return conn

    yield open_
    for conn in opened:
        conn.close()


async def stored(redis: Redis, settings: Settings, vid: str) -> list[dict[str, object]]:
    return [orjson.loads(x) for x in await redis.lrange(VisitorKeys(vid, settings.partitions).events, 0, -1)]


# --- keep-alive, pipelining, bodies ---------------------------------------------------------------------


async def test_keep_alive_answers_each_beacon_on_one_connection(connect, redis_client: Redis,  # type: ignore[no-untyped-def]
                                                                tracker_settings: Settings) -> None:
    vid = str(uuid.uuid4())
    conn = await connect()
    for i in range(3):
        conn.send(post_t(beacon_body(vid, f"e{i}"), f"X-Request-Id: r{i}"))
        [answer] = await conn.answers(1)
        assert answer.status == 204 and answer.headers["x-request-id"] == f"r{i}"
        assert "connection" not in answer.headers and answer.headers["date"].endswith("GMT")
    assert [e["id"] for e in await stored(redis_client, tracker_settings, vid)] == ["e0", "e1", "e2"]


async def test_pipelined_beacons_are_answered_in_order(connect, redis_client: Redis,  # type: ignore[no-untyped-def]
                                                       tracker_settings: Settings) -> None:
    vid = str(uuid.uuid4())
    conn = await connect()
    conn.send(b"".join(post_t(beacon_body(vid, f"p{i}"), f"X-Request-Id: q{i}") for i in range(5)))
    answers = await conn.answers(5)
    assert [(a.status, a.headers["x-request-id"]) for a in answers] == [(204, f"q{i}") for i in range(5)]
    assert sorted(e["id"] for e in await stored(redis_client, tracker_settings, vid)) == [f"p{i}" for i in range(5)]


async def test_a_request_split_into_single_bytes_is_answered(connect) -> None:  # type: ignore[no-untyped-def]
    conn = await connect()
    for byte in post_t(beacon_body(str(uuid.uuid4()))):
        conn.send(bytes([byte]))
        await asyncio.sleep(0)
    [answer] = await conn.answers(1)
    assert answer.status == 204


async def test_a_chunked_beacon_is_stored(connect, redis_client: Redis,  # type: ignore[no-untyped-def]
                                          tracker_settings: Settings) -> None:
    vid = str(uuid.uuid4())
    body = beacon_body(vid, "chunked-1")
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7))
    conn = await connect()
    conn.send(b"POST /t HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
    [answer] = await conn.answers(1)
    assert answer.status == 204
    assert [e["id"] for e in await stored(redis_client, tracker_settings, vid)] == ["chunked-1"]


async def test_expect_100_continue_is_answered_before_the_body(connect) -> None:  # type: ignore[no-untyped-def]
    body = beacon_body(str(uuid.uuid4()))
    conn = await connect()
    head, _, _ = post_t(body, "Expect: 100-continue").partition(b"\r\n\r\n")
    conn.send(head + b"\r\n\r\n")
    [cont] = await conn.answers(1)
    assert cont.status == 100
    conn.send(body)
    assert [a.status for a in await conn.answers(1)] == [204]


async def test_a_declared_body_over_the_limit_is_413_without_continue_and_closes(  # type: ignore[no-untyped-def]
        connect, tracker_settings: Settings) -> None:
    conn = await connect()
    too_big = tracker_settings.max_body_bytes + 1
    conn.send(f"POST /t HTTP/1.1\r\nHost: t\r\nContent-Length: {too_big}\r\nExpect: 100-continue\r\n\r\n".encode())
    [answer] = await conn.answers(1)
    assert answer.status == 413 and answer.json()["error"] == "payload_too_large"
    assert answer.headers["connection"] == "close" and await conn.closed()


async def test_a_chunked_body_growing_over_the_limit_is_413_and_closes(  # type: ignore[no-untyped-def]
        connect, tracker_settings: Settings) -> None:
    conn = await connect()
    conn.send(b"POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 4096
    for _ in range(tracker_settings.max_body_bytes // len(chunk) + 1):
        conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    [answer] = await conn.answers(1)
    assert answer.status == 413 and await conn.closed()


async def test_a_compressed_beacon_is_415(connect) -> None:  # type: ignore[no-untyped-def]
    conn = await connect()
    conn.send(post_t(b"\x1f\x8b....", "Content-Encoding: gzip"))
    [answer] = await conn.answers(1)
    assert answer.status == 415 and answer.json()["error"] == "unsupported_media_type"


# --- limits and malformed requests ----------------------------------------------------------------------


async def test_too_many_headers_is_431_and_closes(connect) -> None:  # type: ignore[no-untyped-def]
    conn = await connect()
    conn.send(post_t(beacon_body(str(uuid.uuid4())), *(f"X-H{i}: {i}" for i in range(130))))
    [answer] = await conn.answers(1)
    assert answer.status == 431 and answer.json()["error"] == "request_header_fields_too_large"
    assert await conn.closed()


async def test_a_head_growing_past_its_limit_is_431(connect) -> None:  # type: ignore[no-untyped-def]
    """Repeated headers are counted by bytes: the whole head stays within a request line and 128 headers."""
    conn = await connect()
    conn.send(b"POST /t HTTP/1.1\r\nHost: t\r\n" + b"X-Same: " + b"v" * 8000 + b"\r\n")
    for _ in range(150):
        conn.send(b"X-Same: " + b"v" * 8000 + b"\r\n")
    [answer] = await conn.answers(1)
    assert answer.status == 431 and await conn.closed()


async def test_a_header_over_8190_bytes_is_431(connect) -> None:  # type: ignore[no-untyped-def]
    conn = await connect()
    conn.send(post_t(beacon_body(str(uuid.uuid4())), "X-Big: " + "a" * 9000))
    [answer] = await conn.answers(1)
    assert answer.status == 431


async def test_a_request_line_over_64_kib_is_414(connect) -> None:  # type: ignore[no-untyped-def]
    conn = await connect()
    conn.send(get("/t.js?" + "a" * (64 * 1024 + 10)))
    [answer] = await conn.answers(1)
    assert answer.status == 414 and await conn.closed()


async def test_malformed_http_is_a_json_400_and_closes(connect) -> None:  # type: ignore[no-untyped-def]
    conn = await connect()
    conn.send(b"POST /t HTTP/1.1\r\nHost: t\r\nContent-Length: nope\r\n\r\n")
    [answer] = await conn.answers(1)
    assert answer.status == 400 and answer.json()["error"] == "bad_request" and await conn.closed()


@pytest.mark.parametrize("raw", [
    b"POST /t HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /t HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 3\r\n\r\n{}{}",
    b"POST /t\x00 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /t HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\nContent-Length: 0\r\n\r\n",
    b"POST /t HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 100,
], ids=["cl-and-te", "two-cl", "nul-url", "nul-header", "huge-cl", "tls-hello"])
async def test_ambiguous_or_broken_framing_is_refused(connect, raw: bytes) -> None:  # type: ignore[no-untyped-def]
    """Request smuggling's shapes (both lengths, two lengths, chunked not last) and bytes that are not HTTP:
    a JSON 400, the connection closed, nothing stored."""
    conn = await connect()
    conn.send(raw)
    [answer] = await conn.answers(1)
    assert answer.status == 400 and answer.json()["error"] == "bad_request" and await conn.closed()


async def test_a_transfer_coding_other_than_chunked_is_501(connect) -> None:  # type: ignore[no-untyped-def]
    conn = await connect()
    conn.send(b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
    [answer] = await conn.answers(1)
    assert answer.status == 501 and answer.json()["error"] == "not_implemented" and await conn.closed()


class TestManyPipelined:
    @pytest.fixture
    def tracker_settings(self, tracker_settings: Settings) -> Settings:
        """Flow control, not the storage deadline, is under test: a loaded machine may stall a beacon past 1 s."""
        return dataclasses.replace(tracker_settings, redis_timeout=30.0)

    async def test_a_thousand_pipelined_beacons_in_one_write(self, connect, redis_client: Redis,  # type: ignore[no-untyped-def]
                                                             tracker_settings: Settings) -> None:
        """Reading pauses while 32 answers are owed and resumes as they go out: every one is answered, in order."""
        vid = str(uuid.uuid4())
        conn = await connect()
        conn.send(b"".join(post_t(beacon_body(vid, f"many-{i}"), f"X-Request-Id: m{i}") for i in range(1000)))
        answers = await conn.answers(1000, within=30)
        assert [a.headers["x-request-id"] for a in answers] == [f"m{i}" for i in range(1000)]
        assert {a.status for a in answers} == {204}
        assert len(await stored(redis_client, tracker_settings, vid)) == 1000


async def test_a_slow_client_gets_408(connect, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(edge_protocol, "REQUEST_SECONDS", 0.3)
    monkeypatch.setattr(edge_site, "SWEEP_SECONDS", 0.1)
    conn = await connect()
    conn.send(b"POST /t HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
    [answer] = await conn.answers(1, within=5)
    assert answer.status == 408 and await conn.closed()


async def test_an_idle_connection_is_closed(connect, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(edge_protocol, "IDLE_SECONDS", 0.3)
    monkeypatch.setattr(edge_site, "SWEEP_SECONDS", 0.1)
    conn = await connect()
    conn.send(post_t(beacon_body(str(uuid.uuid4()))))
    assert [a.status for a in await conn.answers(1)] == [204]
    assert await conn.closed(within=5)


async def test_a_vanished_client_s_beacon_is_still_stored(connect, redis_client: Redis,  # type: ignore[no-untyped-def]
                                                          tracker_settings: Settings) -> None:
    vid = str(uuid.uuid4())
    conn = await connect()
    conn.send(post_t(beacon_body(vid, "gone-1")))
    await conn.writer.drain()
    conn.writer.transport.abort()
    for _ in range(100):
        if await stored(redis_client, tracker_settings, vid):
            break
        await asyncio.sleep(0.02)
    assert [e["id"] for e in await stored(redis_client, tracker_settings, vid)] == ["gone-1"]
    other = await connect()
    other.send(post_t(beacon_body(str(uuid.uuid4()))))
    assert [a.status for a in await other.answers(1)] == [204]


async def test_a_half_closed_client_still_gets_its_answer(connect, redis_client: Redis,  # type: ignore[no-untyped-def]
                                                          tracker_settings: Settings) -> None:
    vid = str(uuid.uuid4())
    conn = await connect()
    conn.send(post_t(beacon_body(vid, "half-1")))
    conn.writer.write_eof()
    assert [a.status for a in await conn.answers(1)] == [204]
    assert await conn.closed()
    assert [e["id"] for e in await stored(redis_client, tracker_settings, vid)] == ["half-1"]


# --- HTTP/1.0, HEAD, the other routes and the hand-over ---------------------------------------------------


async def test_http_1_0_closes_unless_kept_alive(connect) -> None:  # type: ignore[no-untyped-def]
    conn = await connect()
    conn.send(post_t(beacon_body(str(uuid.uuid4())), version="1.0"))
    [answer] = await conn.answers(1)
    assert answer.status == 204 and answer.headers["connection"] == "close" and await conn.closed()
    kept = await connect()
    for _ in range(2):
        kept.send(post_t(beacon_body(str(uuid.uuid4())), "Connection: keep-alive", version="1.0"))
        assert [a.status for a in await kept.answers(1)] == [204]


async def test_the_script_preflight_and_pixel_on_the_edge(connect, redis_client: Redis,  # type: ignore[no-untyped-def]
                                                          tracker_settings: Settings) -> None:
    import base64

    conn = await connect()
    conn.send(get("/t.js", "Accept-Encoding: gzip"))
    [script] = await conn.answers(1)
    assert script.status == 200 and script.headers["content-encoding"] == "gzip"
    conn.send(get("/t.js", f"If-None-Match: {script.headers['etag']}"))
    [cached] = await conn.answers(1)
    assert cached.status == 304 and cached.body == b""
    conn.send(get("/t", "Origin: https://shop.example", method="OPTIONS"))
    [preflight] = await conn.answers(1)
    assert preflight.status == 204 and preflight.headers["access-control-allow-origin"] == "https://shop.example"
    vid = str(uuid.uuid4())
    d = base64.urlsafe_b64encode(beacon_body(vid, "px-1")).decode().rstrip("=")
    conn.send(get(f"/t.gif?d={d}"))
    [pixel] = await conn.answers(1)
    assert pixel.status == 200 and pixel.headers["content-type"] == "image/gif" and pixel.body[:6] == b"GIF89a"
    assert [e["id"] for e in await stored(redis_client, tracker_settings, vid)] == ["px-1"]
    conn.send(get("/t.gif?d=!!"))
    [bad] = await conn.answers(1)
    assert bad.status == 400 and bad.json()["error"] == "validation_failed"


async def test_head_and_other_paths_are_handed_to_aiohttp(connect) -> None:  # type: ignore[no-untyped-def]
    conn = await connect()
    conn.send(get("/healthz"))
    [health] = await conn.answers(1)
    assert health.status == 200 and health.json() == {"status": "ok", "pid": os.getpid()} \
        and "aiohttp" in health.headers["server"]
    conn.send(post_t(beacon_body(str(uuid.uuid4()))))  # aiohttp owns the connection now, and answers alike
    [answer] = await conn.answers(1)
    assert answer.status == 204 and "x-stitcher-visitor" in answer.headers
    head = await connect()
    head.send(get("/t.js", method="HEAD"))
    reader = _Reader(head=True)
    data = await head.reader.readuntil(b"\r\n\r\n")
    reader.feed(data)
    assert reader.answers[0].status == 200 and "aiohttp" in reader.answers[0].headers["server"]


async def test_beacons_then_an_api_path_on_one_connection(connect) -> None:  # type: ignore[no-untyped-def]
    conn = await connect()
    for _ in range(2):
        conn.send(post_t(beacon_body(str(uuid.uuid4()))))
        assert [a.status for a in await conn.answers(1)] == [204]
    conn.send(get("/api/v1/tracker/rejected"))
    [answer] = await conn.answers(1)
    assert answer.status == 401 and answer.json()["error"] == "unauthorized"  # aiohttp's edge middleware
    conn.send(get("/healthz"))
    assert [a.status for a in await conn.answers(1)] == [200]


async def test_an_api_path_pipelined_behind_a_beacon_closes_at_its_boundary(connect) -> None:  # type: ignore[no-untyped-def]
    """RFC 9112 §9.3: the server may close with pipelined requests unanswered; the client retries them."""
    conn = await connect()
    conn.send(post_t(beacon_body(str(uuid.uuid4()))) + get("/healthz"))
    answers = await conn.answers(2, within=5)
    assert [a.status for a in answers] == [204]
    retry = await connect()
    retry.send(get("/healthz"))
    assert [a.status for a in await retry.answers(1)] == [200]


async def test_stopping_answers_a_beacon_in_flight(edge: tuple[web.AppRunner, int], redis_client: Redis,
                                                   tracker_settings: Settings) -> None:
    runner, port = edge
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = Conn(reader, writer)
    vid = str(uuid.uuid4())
    conn.send(post_t(beacon_body(vid, "last-1")))
    await writer.drain()
    await asyncio.sleep(0.05)
    idle = Conn(*await asyncio.open_connection("127.0.0.1", port))
    await runner.cleanup()
    assert await idle.closed()
    answers = await conn.answers(1)
    assert [a.status for a in answers] == [204]
    assert [e["id"] for e in await stored(redis_client, tracker_settings, vid)] == ["last-1"]
    conn.close()
    idle.close()
