"""Hostile input as a hostile client would send it, one named case per kind and endpoint (issue 12): oversized,
1,000 levels deep, wrong-typed, non-UTF-8, duplicate-key and NaN/Infinity bodies on every body the service
takes; header and cookie injection through the visitor id; path traversal and overlong ids in every path
parameter; huge and negative page parameters; a 20 KB cookie and 200 headers. Each: a 4xx with a JSON body
naming the problem, never a 5xx, and nothing stored (every table's rows and the tracker's Redis data counted
before and after). Runs on SQLite, and on PostgreSQL with TEST_DATABASE_URL.

The endpoints and parameters come from the OpenAPI document, which ``tests/unit/test_openapi.py`` holds to
the route table: a new route is covered here without being listed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import DummyCookieJar
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import create_async_engine
from yarl import URL

from stitcher.app import init_app
from stitcher.events.payload import MAX_EVENT_BYTES
from stitcher.groups.handlers import MAX_BODY as MAX_GROUP_BYTES
from stitcher.http_input import MAX_JSON_BYTES
from stitcher.imports.handlers import MAX_IMPORT_BYTES
from stitcher.messages.handlers import MAX_SEND_BYTES
from stitcher.openapi.document import document
from stitcher.orders.api import MAX_ORDERS_BYTES
from tests.conftest import auth
from tests.edge_server import EdgeTestServer
from tests.helpers import Stored
from tracker.identify import MAX_BODY_BYTES as IDENTIFY_MAX_BODY
from tracker.settings import Settings
from tracker.visitor import COOKIE

# every body the service reads: (method, path, its limit in bytes, the field its payload is mainly under)
BODIES = [
    ("POST", "/api/v1/contact", MAX_JSON_BYTES, "fields"),
    ("PUT", "/api/v1/contact/1", MAX_JSON_BYTES, "fields"),
    ("POST", "/api/v1/contact/subscribe", MAX_JSON_BYTES, "contact"),
    ("POST", "/api/v1/event", MAX_EVENT_BYTES, "params"),
    ("POST", "/api/v2/event", MAX_EVENT_BYTES, "params"),
    ("POST", "/api/v1/contacts", MAX_IMPORT_BYTES, "contacts"),
    ("POST", "/api/v1/orders", MAX_ORDERS_BYTES, "orders"),
    ("POST", "/api/v1/groups", MAX_GROUP_BYTES, "conditions"),
    ("POST", "/api/v1/messages", MAX_JSON_BYTES, "body"),
    ("POST", "/api/v1/message/1/smartsend", MAX_SEND_BYTES, "recipients"),
    ("POST", "/api/v1/message/email", MAX_SEND_BYTES, "emails"),
    ("POST", "/t/identify", IDENTIFY_MAX_BODY, "signature"),
    ("POST", "/t", Settings.max_body_bytes, "events"),
]
_IDS = [f"{m} {p}" for m, p, _, _ in BODIES]
DEPTH = 1000


def test_every_documented_body_is_listed_here() -> None:
    """A new operation taking a body must join BODIES (and so every case below)."""
    documented = {(m.upper(), re.sub(r"\{[^}]+\}", "1", p)) for p, item in document()["paths"].items()
                  for m, op in item.items() if "requestBody" in op}
    assert documented == {(m, p) for m, p, _, _ in BODIES}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Signed identify on, so that its body is read (off, every identify is the same 403)."""
    return dataclasses.replace(settings, identify_secrets=("hostile-test-secret",))


@pytest.fixture
async def stored(redis_client: Redis, database_url: str) -> AsyncIterator[Stored]:
    engine = create_async_engine(database_url)
    yield Stored(engine, redis_client)
    await engine.dispose()


async def send(client: Any, method: str, path: str, raw: bytes, **headers: str) -> tuple[int, Any, str]:
    """``raw`` as a JSON body with the test key: (status, decoded JSON answer, the answer's text)."""
    r = await client.request(method, path, data=raw, headers={**auth(), "Content-Type": "application/json",
                                                              **headers})
    text = await r.text()
    assert r.content_type == "application/json", (method, path, r.status, text[:300])
    return r.status, await r.json(), text


def assert_refused(status: int, answer: Any, expected: int | tuple[int, ...] = 400) -> None:
    """A 4xx (``expected``) in the one error shape: ``error``, ``message`` and ``status``."""
    assert status in ((expected,) if isinstance(expected, int) else expected), answer
    assert answer["status"] == status and answer["error"] and answer["message"], answer


# --- bodies ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "limit", "key"), BODIES, ids=_IDS)
async def test_an_oversized_body_is_a_413_and_stores_nothing(client: Any, stored: Stored, method: str, path: str,
                                                               limit: int, key: str) -> None:
    """One byte past the endpoint's limit (a valid JSON text, declared in Content-Length): 413 JSON."""
    before = await stored.count()
    raw = b'{"%s": "' % key.encode() + b"x" * limit + b'"}'
    status, answer, _ = await send(client, method, path, raw)
    assert_refused(status, answer, 413)
    assert await stored.count() == before


@pytest.mark.parametrize(("method", "path", "limit", "key"), BODIES, ids=_IDS)
async def test_json_nested_1000_levels_is_a_400_and_stores_nothing(client: Any, stored: Stored, method: str,
                                                                    path: str, limit: int, key: str) -> None:
    """1,000 levels of arrays or objects, as the body itself or under the endpoint's main field: 400 JSON."""
    before = await stored.count()
    for deep in (b"[" * DEPTH + b"]" * DEPTH, b'{"a":' * DEPTH + b"1" + b"}" * DEPTH):
        for raw in (deep, b'{"%s": %s}' % (key.encode(), deep)):
            status, answer, _ = await send(client, method, path, raw)
            assert_refused(status, answer, 413 if len(raw) > limit else 400)  # identify's limit is 4 KiB
    assert await stored.count() == before


@pytest.mark.parametrize(("method", "path", "limit", "key"), BODIES, ids=_IDS)
async def test_a_wrong_typed_body_or_field_is_a_400_and_stores_nothing(client: Any, stored: Stored, method: str,
                                                                        path: str, limit: int, key: str) -> None:
    """A body that is not an object (array, string, number, null, boolean), or whose main field has the
    wrong JSON type: 400 JSON (contact 1 and message 1 exist, so the refusal is the body's)."""
    await _contact_and_message(client)
    before = await stored.count()
    for raw in (b"[]", b'"text"', b"42", b"null", b"true", b'{"%s": 7}', b'{"%s": "x"}', b'{"%s": false}'):
        status, answer, _ = await send(client, method, path, raw.replace(b"%s", key.encode()))
        assert_refused(status, answer)
    assert await stored.count() == before


@pytest.mark.parametrize(("method", "path", "limit", "key"), BODIES, ids=_IDS)
async def test_a_body_that_is_not_utf8_is_a_400_and_stores_nothing(client: Any, stored: Stored, method: str,
                                                                    path: str, limit: int, key: str) -> None:
    """Bytes that are not UTF-8 JSON text — invalid bytes, a cut sequence, a BOM (RFC 8259 §8.1), UTF-16:
    400 JSON."""
    before = await stored.count()
    for raw in (b'{"%s": "\xff\xfe"}', b'{"%s\xc3": []}', b'\xef\xbb\xbf{"%s": []}', '{"%s": "é"}'.encode("utf-16")):
        status, answer, _ = await send(client, method, path, raw.replace(b"%s", key.encode()))
        assert_refused(status, answer)
    assert await stored.count() == before


_LAST_WINS = ("/t", "/t/identify")  # bodies read as orjson reads them: a repeated key's last value counts


@pytest.mark.parametrize(("method", "path", "limit", "key"), [b for b in BODIES if b[1] not in _LAST_WINS],
                         ids=[i for i, b in zip(_IDS, BODIES, strict=True) if b[1] not in _LAST_WINS])
async def test_a_duplicate_key_is_a_400_naming_it_and_stores_nothing(client: Any, stored: Stored, method: str,
                                                                      path: str, limit: int, key: str) -> None:
    """A key given twice in one object, even with the same value, is a 400 naming it (the beacon, which takes
    the last value, is tested in test_hostile_input.py; identify's signature must match the ID it ends with)."""
    before = await stored.count()
    status, answer, text = await send(client, method, path, b'{"%s": [], "%s": []}' % (key.encode(), key.encode()))
    assert_refused(status, answer)
    assert key in text
    assert await stored.count() == before


@pytest.mark.parametrize(("method", "path", "limit", "key"), BODIES, ids=_IDS)
async def test_nan_and_infinity_are_a_400_and_store_nothing(client: Any, stored: Stored, method: str, path: str,
                                                             limit: int, key: str) -> None:
    """NaN and ±Infinity (not JSON, though Python's encoder writes them): 400 JSON, as the body or a value."""
    before = await stored.count()
    for number in (b"NaN", b"Infinity", b"-Infinity"):
        for raw in (b'{"%s": %s}' % (key.encode(), number), b'{"%s": [%s]}' % (key.encode(), number), number):
            status, answer, _ = await send(client, method, path, raw)
            assert_refused(status, answer)
    assert await stored.count() == before


async def _contact_and_message(client: Any) -> dict[str, int]:
    """A contact, a static group and a prepared message (the first of each: id 1 in a fresh database)."""
    made = {}
    for key, path, body in (("contact_id", "/api/v1/contact", {"externalCustomerId": f"P-{uuid.uuid4()}"}),
                            ("group_id", "/api/v1/groups", {"name": f"g-{uuid.uuid4()}"}),
                            ("message_id", "/api/v1/messages", {"channel": "email", "name": "n", "body": "b"})):
        r = await client.post(path, json=body, headers=auth())
        assert r.status == 200, await r.text()
        made[key] = (await r.json())["id"]
    return made


# --- path and query parameters -----------------------------------------------------------------------------

HOSTILE_IDS = {
    "traversal": "..%2F..%2F..%2Fetc%2Fpasswd",
    "dot-dot": "%2E%2E",
    "backslash": "..%5C..%5Cwindows",
    "nul": "1%00",
    "crlf": "1%0D%0ASet-Cookie:%20evil=1",
    "negative": "-1",
    "zero": "0",
    "past-64-bits": "9" * 30,
    "overlong": "9" * 10_000,
    "overlong-text": "%C3%A9" * 5_000,
}


def _operations_with_path_parameters() -> list[tuple[str, str]]:
    return [(method.upper(), path) for path, item in document()["paths"].items() if "{" in path
            for method in item]


@pytest.mark.parametrize(("method", "path"), _operations_with_path_parameters())
async def test_traversal_and_overlong_ids_in_every_path_parameter_are_a_json_4xx(
        client: Any, stored: Stored, method: str, path: str) -> None:
    """Every path parameter of every operation given a traversal, a NUL, CR LF, a negative, zero, 30 digits,
    10,000 characters: a 400 or 404 JSON answer, no header injected, nothing stored."""
    before = await stored.count()
    for name, value in HOSTILE_IDS.items():
        url = URL(re.sub(r"\{[^}]+\}", value, path), encoded=True)
        r = await client.request(method, url, data=b"{}", headers={**auth(), "Content-Type": "application/json"})
        assert r.content_type == "application/json", (name, r.status, await r.text())
        assert_refused(r.status, await r.json(), (400, 404))
        assert "evil" not in str(r.headers)
    assert await stored.count() == before


PAST_THE_LIMIT = {"startindex": "10000001", "maxrows": "501", "limit": "1001"}
PAGE_VALUES = {"huge": "9" * 30, "past-the-limit": "past", "negative": "-1", "zero": "0", "float": "1.5",
               "exponent": "1e3", "empty": "", "spaces": " 1", "text": "all"}
PAGE_PARAMETERS = ("startindex", "maxrows", "limit")


def _paged_operations() -> list[tuple[str, str]]:
    return [(path, p["name"]) for path, item in document()["paths"].items()
            for p in item.get("get", {}).get("parameters", []) if p["name"] in PAGE_PARAMETERS]


@pytest.mark.parametrize(("path", "name"), _paged_operations())
async def test_huge_and_negative_page_parameters_are_a_400_naming_them(client: Any, path: str, name: str) -> None:
    """``maxrows`` of 30 digits, a negative ``startindex``, a ``limit`` of 1e3 …: a 400 naming the parameter,
    on every paged list (the contact, group and message ids in the path are real, so only the page is wrong)."""
    ids = await _contact_and_message(client)
    url = re.sub(r"\{([^}]+)\}", lambda m: str(ids[m.group(1)]), path)
    for value in PAGE_VALUES.values():
        r = await client.get(url, params={name: PAST_THE_LIMIT[name] if value == "past" else value}, headers=auth())
        answer = await r.json()
        assert_refused(r.status, answer)
        assert answer["errors"][0]["field"] == name, (value, answer)


# --- the visitor id, headers and cookies -------------------------------------------------------------------


@pytest.fixture(params=["edge", "aiohttp"])
async def front(request: pytest.FixtureRequest, aiohttp_client: Any, settings: Settings) -> Any:
    """The whole service through each front: the edge (as ``stitcher serve``) and the aiohttp app alone."""
    app = init_app(settings)
    return await aiohttp_client(EdgeTestServer(app) if request.param == "edge" else app, cookie_jar=DummyCookieJar())


INJECTED_VIDS = [
    "3f1d5e0a-0000-4000-8000-000000000000\r\nSet-Cookie: evil=1",
    "3f1d5e0a-0000-4000-8000-000000000000; Domain=evil.example; Path=/",
    "3f1d5e0a-0000-4000-8000-000000000000\nX-Evil: 1",
    "<script>evil()</script>",
    "../../evil",
]


async def test_header_injection_through_the_body_vid_goes_nowhere(front: Any, stored: Stored) -> None:
    """A ``vid`` carrying CR LF, cookie attributes, markup or a path is a 400 naming ``vid``: never echoed
    into ``Set-Cookie`` or ``X-Stitcher-Visitor``, no header injected, nothing stored."""
    before = await stored.count()
    for vid in INJECTED_VIDS:
        r = await front.post("/t", data=f'{{"vid": {_json_str(vid)}, "events": [{{"id": "{uuid.uuid4()}", '
                                        '"type": "page_view"}]}', headers={"Content-Type": "text/plain"})
        answer = await r.json()
        assert_refused(r.status, answer)
        assert answer["errors"][0]["field"] == "vid", answer
        assert "Set-Cookie" not in r.headers and "X-Stitcher-Visitor" not in r.headers
        assert "evil" not in str(r.headers).lower()
    assert await stored.count() == before


INJECTED_COOKIES = [
    f"{COOKIE}=3f1d5e0a-0000-4000-8000-000000000000; Domain=evil.example",
    f'{COOKIE}="3f1d5e0a-0000-4000-8000-000000000000\\r\\nSet-Cookie: evil=1"',
    f"{COOKIE}=../../evil; {COOKIE}=<script>",
    f"{COOKIE}=%0d%0aSet-Cookie:%20evil=1",
    f"{COOKIE}={'a' * 4000}",
]


async def test_cookie_injection_through_the_visitor_cookie_goes_nowhere(front: Any) -> None:
    """A ``stitcher_vid`` cookie that is not a visitor id is ignored (a fresh id is set and its events are
    stored); what is sent beside it in the Cookie header is never echoed into ``Set-Cookie``."""
    for cookie in INJECTED_COOKIES:
        r = await front.post("/t", data=f'{{"events": [{{"id": "{uuid.uuid4()}", "type": "page_view"}}]}}',
                             headers={"Content-Type": "text/plain", "Cookie": cookie})
        assert r.status == 204, await r.text()
        echoed = r.headers["X-Stitcher-Visitor"]
        assert str(uuid.UUID(echoed)) == echoed
        [set_cookie] = r.headers.getall("Set-Cookie")
        assert set_cookie.startswith(f"{COOKIE}={echoed};") and "evil" not in set_cookie.lower()


def _json_str(value: str) -> str:
    return orjson.dumps(value).decode()


async def _raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request over a raw socket (no client library to tidy its headers): status, headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(30):
            data = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


HEADS = {
    "cookie-20kb": b"Cookie: " + f"{COOKIE}=3f1d5e0a-0000-4000-8000-000000000000; pad=".encode() + b"x" * 20_000,
    "200-headers": b"\r\n".join(b"X-Filler-%d: %d" % (i, i) for i in range(200)),
    "crlf-in-cookie": b"Cookie: " + f"{COOKIE}=abc\rSet-Cookie: evil=1".encode(),
    "url-70kb": b"X-Url: long",  # the request line made 70 KB long below
}
HEAD_STATUS = {"cookie-20kb": 431, "200-headers": 431, "crlf-in-cookie": 400, "url-70kb": 414}


@pytest.mark.parametrize("path", ["/t", "/api/v1/contacts", "/nowhere"])
@pytest.mark.parametrize("head", HEADS.keys())
async def test_oversized_or_broken_heads_get_a_json_4xx_from_the_http_layer(aiohttp_client: Any, settings: Settings,
                                                                            stored: Stored, path: str,
                                                                            head: str) -> None:
    """A 20 KB cookie or 200 headers are refused by the HTTP layer before any handler runs — by the edge
    (``/t``) and by aiohttp behind it (every other path) — as a JSON 431, a 70 KB request line as a JSON 414,
    a CR inside a header as a JSON 400; the connection closes and nothing is stored."""
    client = await aiohttp_client(EdgeTestServer(init_app(settings)))
    before = await stored.count()
    body = b'{"events": [{"id": "e1", "type": "page_view"}]}'
    method = b"POST" if path == "/t" else b"GET"
    if head == "url-70kb":
        path += "?q=" + "x" * 70_000
    request = (b"%s %s HTTP/1.1\r\nHost: t\r\nAuthorization: %s\r\nContent-Type: text/plain\r\n%s\r\n"
               b"Content-Length: %d\r\n\r\n%s") % (method, path.encode(), auth()["Authorization"].encode(),
                                                   HEADS[head], len(body), body)
    status, headers, answer = await _raw(client.port, request)
    assert status == HEAD_STATUS[head], answer[:300]
    assert headers["content-type"].startswith("application/json"), headers
    decoded = orjson.loads(answer)
    assert decoded["status"] == status and decoded["error"] and decoded["message"], decoded
    assert "evil" not in str(headers)
    assert await stored.count() == before


# --- slow clients ------------------------------------------------------------------------------------------

SLOW_CLIENTS = 20


async def _trickle(writer: asyncio.StreamWriter, start: bytes, stop: asyncio.Event) -> None:
    """Send ``start``, then a byte every 0.2 s until ``stop`` (or the server closes the connection)."""
    writer.write(start)
    while not stop.is_set() and not writer.is_closing():
        try:
            writer.write(b"a")
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(0.2)


async def _answer_of(reader: asyncio.StreamReader) -> tuple[int, Any]:
    """The one answer a slow client gets, read as it arrives (the server may reset the connection after it,
    as the client is still sending), then the connection's end: status and JSON body."""
    async with asyncio.timeout(60):
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"application/json" in head.lower(), head
        length = int(re.search(rb"content-length: *(\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
        body = await reader.readexactly(length)
        try:
            assert await reader.read(65536) == b""  # closed
        except ConnectionResetError:
            pass
    return int(head.split()[1]), orjson.loads(body)


@pytest.mark.parametrize("part", ["head", "body"])
@pytest.mark.parametrize("path", ["/t", "/api/v1/contact"])
async def test_slow_loris_clients_are_timed_out_and_the_service_keeps_answering_others(
        aiohttp_client: Any, settings: Settings, stored: Stored, monkeypatch: pytest.MonkeyPatch, part: str,
        path: str) -> None:
    """Twenty clients trickling a request a byte at a time — the head, or the body after a whole head — to the
    beacon (the edge's) and to the API (aiohttp's, behind the edge): others are answered meanwhile, and each
    slow client gets a JSON 408 within the bounded read time and its connection closed; nothing is stored."""
    from tracker import connection
    from tracker.edge import protocol

    monkeypatch.setattr(protocol, "REQUEST_SECONDS", 2.0)
    monkeypatch.setattr(connection, "BODY_SECONDS", 2.0)
    client = await aiohttp_client(EdgeTestServer(init_app(settings)), cookie_jar=DummyCookieJar())
    before = await stored.count()
    start = f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: {auth()['Authorization']}\r\n".encode()
    start += b"Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n{" if part == "body" else b"X-Slow: "
    stop = asyncio.Event()
    slow = [await asyncio.open_connection("127.0.0.1", client.port) for _ in range(SLOW_CLIENTS)]
    trickling = [asyncio.create_task(_trickle(writer, start, stop)) for _, writer in slow]
    try:
        r = await client.post("/t", data=f'{{"events": [{{"id": "{uuid.uuid4()}", "type": "page_view"}}]}}',
                              headers={"Content-Type": "text/plain"})
        assert r.status == 204, await r.text()
        r = await client.get("/api/v1/contacts", headers=auth())
        assert r.status == 200, await r.text()
        for reader, _ in slow:
            status, answer = await _answer_of(reader)
            assert status == 408 and answer["status"] == 408 and answer["error"] == "request_timeout", answer
    finally:
        stop.set()
        await asyncio.gather(*trickling)
        for _, writer in slow:
            writer.close()
    after = await stored.count()
    assert after[0] == before[0]  # the beacon sent meanwhile is the only thing stored
