"""One client connection of the edge: the tracking routes answered here, anything else handed to aiohttp.

llhttp (through ``httptools``) parses the bytes; a request for ``POST /t``, ``OPTIONS /t``, ``GET /t.gif`` or
``GET /t.js`` is answered from ``tracker.answers`` with a response written as bytes, without aiohttp's
request, response or middleware objects. A request for any other path (or method) hands the connection to
aiohttp's own request handler at that request's first byte: the bytes received since then are replayed into
it and it owns the connection from there on (the API, the console, HEAD, upgrades: all exactly as aiohttp
serves them).

That hand-over needs the request to start at the start of a received chunk, which is so for the first
request of a connection and for every request of a client that waits for each answer (browsers, HTTP client
libraries). A client that pipelines another path behind a tracking request in one chunk gets the tracking
answers, then the connection closes at that request's boundary without an answer to it, as RFC 9112 §9.3
lets a server do; the client retries it on a new connection, where it comes first.

Requests of one connection are answered in order, one at a time. Limits, all answered as JSON with
``Connection: close``: a request line of at most ``MAX_LINE_BYTES``, at most ``MAX_HEADERS`` headers of at
most ``MAX_FIELD_BYTES`` each (431), a body of at most the beacon limit (413, also when declared), a whole
request within ``REQUEST_SECONDS`` of its first byte (408). Idle connections close after ``IDLE_SECONDS``, and
a client that reads nothing of its answers for as long is dropped (reading its requests pauses meanwhile).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import httptools
import structlog

from tracker.answers import (
    Reply,
    Tracking,
    check_declared_length,
    check_encoding,
    error_reply,
    is_secure,
    json_reply,
    request_id_from,
    spawn,
)
from tracker.clientip import peer_host
from tracker.connection import MAX_FIELD_BYTES, MAX_HEADERS, MAX_LINE_BYTES
from tracker.edge.wire import encode
from tracker.errors import DomainError, PayloadTooLarge

MAX_HEAD_BYTES = MAX_LINE_BYTES + MAX_HEADERS * (MAX_FIELD_BYTES + 4)  # a whole request line and header block
REQUEST_SECONDS, IDLE_SECONDS = 30.0, 75.0
MAX_QUEUED = 32  # pipelined requests read ahead of their answers before reading pauses
GATHER_BYTES = 8192  # a head arriving in pieces is parsed in pieces of at least this, or at its end
FOLD_PIECES = 64  # a body in more pieces than this is folded into one
# the routes answered here: (method, path) → which
_ROUTES = {(b"POST", b"/t"): "beacon", (b"OPTIONS", b"/t"): "preflight", (b"GET", b"/t.gif"): "pixel",
           (b"GET", b"/t.js"): "script"}
_PATHS = {route: path.decode() for (_, path), route in _ROUTES.items()}
_METHODS = {route: method.decode() for (method, _), route in _ROUTES.items()}
# the headers the tracking routes read; others are counted and skipped
_WANTED = frozenset([b"content-length", b"content-encoding", b"transfer-encoding", b"origin", b"cookie",
                     b"user-agent", b"x-request-id", b"x-forwarded-proto", b"expect", b"if-none-match",
                     b"accept-encoding", b"x-forwarded-for"])
_FORWARDED = b"x-forwarded-for"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
log = structlog.get_logger("http")


class Connections:
    """A site's edge connections; ``empty`` is set while there are none."""

    def __init__(self) -> None:
        self._open: set[EdgeProtocol] = set()
        self.empty = asyncio.Event()
        self.empty.set()

    def add(self, connection: EdgeProtocol) -> None:
        self._open.add(connection)
        self.empty.clear()

    def discard(self, connection: EdgeProtocol) -> None:
        self._open.discard(connection)
        if not self._open:
            self.empty.set()

    def __iter__(self) -> Iterator[EdgeProtocol]:
        return iter(list(self._open))

    def __len__(self) -> int:
        return len(self._open)


class _HandOver(Exception):
    """Raised out of the parser: this request is not the edge's."""


class _Closing(Exception):
    """Raised out of the parser: the request just parsed is the connection's last."""


class _Refuse(Exception):
    """Raised out of the parser: answer ``reply`` and close the connection."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply


def _refusal(status: int, code: str, message: str) -> _Refuse:
    return _Refuse(json_reply({"error": code, "message": message, "status": status}, status))


def _url_too_long() -> _Refuse:
    return _refusal(414, "uri_too_long", f"the request line is longer than {MAX_LINE_BYTES} bytes")


def _too_many_headers() -> _Refuse:
    return _refusal(431, "request_header_fields_too_large",
                    f"at most {MAX_HEADERS} headers of at most {MAX_FIELD_BYTES} bytes each")


class EdgeProtocol(asyncio.Protocol):
    """See the module's text. ``fallback`` makes aiohttp's protocol for a hand-over."""

    def __init__(self, tracking: Tracking, fallback: Callable[[], asyncio.Protocol], connections: Connections,
                 secure: bool = False) -> None:
        self._tracking = tracking
        self._fallback = fallback
        self._connections = connections
        self._secure = secure
        self._transport: asyncio.Transport | None = None
        # the parser's per-field callbacks are C methods of the request's containers: no Python frame per
        # header, URL piece or body chunk (httptools looks them up once, as it is made)
        self._fields: dict[bytes, bytes] = {}
        self._url_parts: list[bytes] = []
        self._body: list[bytes] = []
        self.on_header = self._fields.setdefault  # a header sent twice counts by its first value, as in aiohttp
        if tracking.client.trusts_proxies:  # but X-Forwarded-For by every value, joined: see _on_header
            self.on_header = self._on_header  # type: ignore[assignment]
        self.on_url = self._url_parts.append
        self.on_body = self._body.append
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[tuple[Any, ...]] = deque()
        self._answering = False  # the request at the head of the queue is being answered
        self._in_answer_next = False
        self._keep_alive = True  # that request's connection stays open after its answer
        self._http10 = False  # that request is HTTP/1.0 (its keep-alive is confirmed in the answer)
        self._continue_owed = False  # the request arriving asked for 100 Continue behind answers still owed
        self._reading_paused = False
        self._writing_paused = False
        self._done = False  # refused, handed over or closing: nothing more is parsed
        self._pending_hand_over: bytes | None = None
        self._close_when_answered = False
        # the request being parsed
        self._chunk = b""  # the bytes being fed to the parser
        self._between = True  # no request is partly parsed
        self._fresh = True  # the chunk being fed starts between requests (no callback of it has begun one)
        self._aligned = False  # it began at the first byte of a chunk: its bytes so far are in _raw
        self._raw: list[bytes] | None = None
        self._in_head = False  # its request line and headers are arriving
        self._head_bytes = 0  # bytes received since it began, while in its head
        self._held = bytearray()  # the bytes of its head gathered and not yet parsed (``_gather``)
        self._tail = b""  # the head's last three bytes received
        self._body_bytes = self._body_counted = 0  # its body's length so far, and how many pieces that counts
        self._url = b""
        self._http10_kept = False  # it is HTTP/1.0 and sent a Connection header
        self._route: str | None = None
        self._headers: dict[str, str] = {}
        self._started = 0.0
        self._peer: str | None = None  # the client's address (a proxy's, if one is in front)
        self.last_active = self._began = time.monotonic()  # last byte in or out; its first byte

    # --- asyncio.Protocol ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        self._peer = peer_host(transport.get_extra_info("peername"))
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = True
        self._connections.discard(self)
        self._queue.clear()  # a beacon being stored is stored; its answer has nobody to go to

    def pause_writing(self) -> None:  # the client does not read its answers: stop reading its requests
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self.last_active = time.monotonic()  # the client reads: progress
        if len(self._queue) < MAX_QUEUED:
            self._resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        self.last_active = time.monotonic()
        if self._in_head:  # the rest of a head that arrived in part
            gathered = self._gather(data)
            if gathered is None:
                return
            data = gathered
        self._chunk = data
        self._fresh = self._between
        if self._raw is not None:
            self._raw.append(data)
        try:
            self._parser.feed_data(data)
            if not self._between and not self._done:
                self._check_growth(len(data))
        except _Refuse as exc:
            self._refuse(exc.reply)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _HandOver):
                self._hand_over_or_close()
            elif isinstance(cause, _Refuse):
                self._refuse(cause.reply)
            elif not isinstance(cause, _Closing):
                raise
        except httptools.HttpParserUpgrade:
            self._hand_over_or_close()
        except httptools.HttpParserError as exc:
            log.warning("request refused by the HTTP parser", error=type(exc).__name__)
            self._refuse(json_reply({"error": "bad_request", "message": "malformed HTTP request",
                                     "status": 400}, 400))
        self._chunk = b""

    def eof_received(self) -> bool | None:
        """The client will send no more: answer what it sent (a half-closed socket still reads), then close."""
        self._done = True
        if self._answering or self._queue:
            self._close_when_answered = True
            return True  # keep the transport open for the answers
        return None

    # --- httptools callbacks -----------------------------------------------------------------------------

    def _on_header(self, name: bytes, value: bytes) -> None:
        """``on_header`` with trusted proxies: a proxy may add its own X-Forwarded-For line below the client's
        (HAProxy does), so every line counts, joined in order (kept under the lower-case name)."""
        if len(name) == len(_FORWARDED) and name.lower() == _FORWARDED:
            fields = self._fields
            fields[_FORWARDED] = fields[_FORWARDED] + b", " + value if _FORWARDED in fields else value
        else:
            self._fields.setdefault(name, value)

    def on_message_begin(self) -> None:
        self._aligned = self._fresh
        self._fresh = self._between = False
        self._raw = [self._chunk] if self._aligned else None
        self._in_head = True
        self._head_bytes = 0
        self._body_bytes = self._body_counted = 0
        self._fields.clear()
        self._url_parts.clear()
        self._body.clear()
        self._route = None
        self._continue_owed = False
        self._started = time.perf_counter()
        self.last_active = self._began = time.monotonic()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._url = url = b"".join(self._url_parts)
        route = _ROUTES.get((self._parser.get_method(), url.partition(b"?")[0]))
        if route is None or self._parser.should_upgrade():
            raise _HandOver()
        self._route = route
        self._raw = None  # the edge's: never handed over
        fields = self._fields
        if len(url) > MAX_LINE_BYTES:
            raise _url_too_long()
        if fields and (len(fields) > MAX_HEADERS or max(map(len, fields)) > MAX_FIELD_BYTES
                       or max(map(len, fields.values())) > MAX_FIELD_BYTES):
            raise _too_many_headers()
        # the first of a name in two cases wins too (a dict keeps the last of equal keys: fed in reverse)
        lowered = dict(zip(map(bytes.lower, reversed(fields)), reversed(fields.values()), strict=True))
        self._headers = headers = {name.decode(): value.decode("latin-1") for name, value in lowered.items()
                                   if name in _WANTED}
        # HTTP/1.0 is kept alive only by a Connection header (the version is asked only then: it costs a format)
        self._http10_kept = b"connection" in lowered and self._parser.get_http_version() == "1.0"
        if route == "beacon":
            coding = headers.get("transfer-encoding")
            if coding is not None and coding.strip().lower() != "chunked":  # RFC 9112 §6.1
                raise _refusal(501, "not_implemented", "the only transfer coding accepted is chunked")
            try:
                length = headers.get("content-length")
                check_declared_length(int(length) if length else None, self._tracking.limits.max_body_bytes)
                check_encoding(headers)
            except DomainError as exc:
                raise _Refuse(self._tracking.refused(headers, exc, self._started)) from None
            if headers.get("expect", "").lower() == "100-continue":
                if self._answering or self._queue:  # an interim answer may not overtake earlier answers
                    self._continue_owed = True
                elif self._transport is not None:
                    self._transport.write(_CONTINUE)

    def _gather(self, data: bytes) -> bytes | None:
        """The head's pieces gathered until its end or ``GATHER_BYTES``: the parser joins a header's pieces
        by concatenation (quadratic in their number) and holds each piece of the URL as an object of its own
        (some 35 bytes a piece), so a client sending its head a byte or two a packet is parsed in big pieces."""
        held = self._held
        end = self._tail + data  # the head's end may straddle what was parsed and what arrives
        self._tail = end[-3:]
        held += data
        if len(held) < GATHER_BYTES and b"\r\n\r\n" not in end:
            return None
        self._held = bytearray()
        return bytes(held)

    def _check_growth(self, received: int) -> None:
        """After a chunk that left a request unfinished: its head or its body must not outgrow the limits
        (the parser keeps no count of its own)."""
        if self._in_head:
            self._tail = self._chunk[-3:]
            self._head_bytes += received
            if self._head_bytes > MAX_HEAD_BYTES:
                raise _url_too_long() if sum(map(len, self._url_parts)) > MAX_LINE_BYTES else _too_many_headers()
        elif self._route == "beacon":
            self._check_body()
            body = self._body
            if len(body) > FOLD_PIECES:  # tiny pieces cost an object each: one bytes-like piece instead
                body[:] = [b"".join(body)]
                self._body_counted = 1

    def _check_body(self) -> None:
        """The body's length, counted as it grows: only the pieces since the last count are measured (a body
        of many tiny pieces is not measured whole again after each packet)."""
        body, limit = self._body, self._tracking.limits.max_body_bytes
        if len(body) > self._body_counted:
            self._body_bytes += sum(map(len, body[self._body_counted:]))
            self._body_counted = len(body)
        if self._body_bytes > limit:
            exc = PayloadTooLarge(f"body is larger than the limit of {limit} bytes")
            raise _Refuse(self._tracking.refused(self._headers, exc, self._started))

    def on_message_complete(self) -> None:
        self._between = True
        self._raw = None
        self._continue_owed = False  # its body came without it
        if self._route == "beacon":
            self._check_body()
        query = self._url.partition(b"?")[2]
        parser = self._parser
        keep_alive = parser.should_keep_alive()
        self._queue.append((self._route, self._headers, b"".join(self._body), query, keep_alive,
                            keep_alive and self._http10_kept, self._started))
        if len(self._queue) >= MAX_QUEUED or not keep_alive:
            self._pause_reading()
        if not self._answering:
            self._answer_next()
        if not keep_alive:  # the last request of the connection: what follows is not read (RFC 9112 §9.6)
            self._done = True
            raise _Closing()

    # --- routing, answers and hand-over ------------------------------------------------------------------

    def _answer_next(self) -> None:
        """Answer the queued requests in order, until one has to wait (a beacon being stored, a pixel).

        No task per request: a beacon's answer comes back through ``_answered`` (called by the group commit's
        flush, or at once for a bad body), which writes it and comes back here for the rest of the queue.
        """
        if self._in_answer_next:  # an answer given at once: the loop below goes on
            return
        self._in_answer_next = True
        tracking = self._tracking
        try:
            while self._queue and not self._answering:
                route, headers, body, query, keep_alive, self._http10, started = self._queue.popleft()
                self._keep_alive = keep_alive and not (self._close_when_answered and not self._queue)
                self._answering = True
                if route == "beacon":
                    tracking.beacon(headers, body, is_secure(self._secure, headers), started, self._answered,
                                    self._peer, headers.get("x-forwarded-for"))
                elif route == "refused":
                    self._answered(body)
                elif route == "pixel":
                    spawn(self._pixel(headers, query, started))
                else:
                    self._answered(self._other(route, headers, started))
        finally:
            self._in_answer_next = False
        if not self._answering and not self._queue:
            if self._continue_owed and self._transport is not None:  # the request arriving is next
                self._continue_owed = False
                self._transport.write(_CONTINUE)
            if self._pending_hand_over is not None:
                self._hand_over(self._pending_hand_over)
            elif self._close_when_answered:
                self._close()

    def _answered(self, reply: Reply) -> None:
        """The answer to the request at the head of the queue: written, then on with the queue."""
        self._write(reply, self._keep_alive, self._http10)
        if not self._keep_alive:
            self._queue.clear()
            self._close()
            return
        self._answering = False
        if self._reading_paused and not self._writing_paused and not self._done and len(self._queue) < MAX_QUEUED // 2:
            self._resume_reading()
        self._answer_next()

    def _other(self, route: str, headers: dict[str, str], started: float) -> Reply:
        """The preflight and the script: counted like the beacon, logged when sampled."""
        tracking = self._tracking
        reply = tracking.preflight(headers) if route == "preflight" else tracking.script_reply(headers)
        request_id = request_id_from(headers.get("x-request-id"))
        reply.headers.append(("X-Request-Id", request_id))
        tracking.account(_PATHS[route], _METHODS[route], reply.status, started, request_id, None)
        return reply

    async def _pixel(self, headers: dict[str, str], query: bytes, started: float) -> None:
        tracking = self._tracking
        error = None
        request_id = request_id_from(headers.get("x-request-id"))
        try:
            d = parse_qs(query.decode("latin-1")).get("d", [None])[-1]
            reply = await tracking.pixel(headers, d, is_secure(self._secure, headers), self._peer,
                                         headers.get("x-forwarded-for"))
        except Exception as exc:
            reply, error = error_reply(exc, request_id, path="/t.gif")
        reply.headers.append(("X-Request-Id", request_id))
        tracking.account("/t.gif", "GET", reply.status, started, request_id, error)
        self._answered(reply)

    def _write(self, reply: Reply, keep_alive: bool, http10: bool) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(encode(reply, keep_alive, http10))
        self.last_active = time.monotonic()

    def _refuse(self, reply: Reply) -> None:
        """Answer ``reply`` after what is queued, then close: the stream cannot be trusted any further."""
        self._done = True
        self._continue_owed = False
        self._pause_reading()
        self._queue.append(("refused", {}, reply, b"", False, False, 0.0))
        if not self._answering:
            self._answer_next()

    def _hand_over_or_close(self) -> None:
        self._done = True
        self._pause_reading()
        if not self._aligned or self._raw is None:  # pipelined behind our answers: close at its boundary
            self._close_when_answered = True
            if not self._answering:
                self._close()
            return
        raw = b"".join(self._raw)
        if self._answering:  # earlier requests' answers go first
            self._pending_hand_over = raw
        else:
            self._hand_over(raw)

    def _hand_over(self, raw: bytes) -> None:
        transport = self._transport
        self._connections.discard(self)
        if transport is None or transport.is_closing():
            return
        protocol = self._fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._writing_paused:  # the transport tells a protocol once: aiohttp's writes must wait too
            protocol.pause_writing()
        transport.resume_reading()
        protocol.data_received(raw)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and not self._done and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    def _close(self) -> None:
        self._done = True
        if self._transport is not None:
            self._transport.close()

    # --- for the site --------------------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Close the connection if it has been idle too long or a request is taking too long to arrive; drop it
        if its client has read nothing of its answers for as long (a close would wait for them forever)."""
        transport = self._transport
        if (transport is not None and now - self.last_active > IDLE_SECONDS
                and (self._writing_paused or transport.is_closing())):
            transport.abort()
            return
        if self._answering or self._done:
            return
        if self._between:
            if now - self.last_active > IDLE_SECONDS:
                self._close()
        elif now - self._began > REQUEST_SECONDS:  # from its first byte: a byte now and then is no excuse
            self._refuse(json_reply({"error": "request_timeout", "status": 408,
                                     "message": f"the request did not arrive within {REQUEST_SECONDS:.0f} s"}, 408))

    def shut_down(self) -> None:
        """The service is stopping: close now if idle, else once the queued requests are answered."""
        if self._answering:
            self._close_when_answered = True
            self._done = True
        else:
            self._close()
