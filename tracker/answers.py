"""The tracking routes' work, free of any HTTP server: a request's headers and body in, a ``Reply`` out.

Two fronts serve these routes and answer alike: the edge (``tracker.edge``: the service's own listener, which
answers the beacon routes without aiohttp's request machinery) and the aiohttp routes (``tracker.routes``,
thin adapters: the application stays whole on its own, and every test client reaches it). Headers are looked
up by lower-case name; aiohttp's case-insensitive mapping and the edge's plain dict both work.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
import structlog
from redis.exceptions import RedisError

from tracker.beacon import Batch, Limits, decode_pixel, parse_batch
from tracker.bots import is_bot
from tracker.clientip import ClientAddress
from tracker.errors import DomainError, PayloadTooLarge, Unavailable, UnsupportedMediaType, ValidationFailed
from tracker.eventlog import AppendResult, EventLog, append_result, is_noscript
from tracker.limits import MAX_REQUEST_ID
from tracker.logs import log_request
from tracker.metrics import Metrics
from tracker.ratelimit import TRACK, Limiter, RateLimited, retry_after
from tracker.script import Script
from tracker.visitor import COOKIE, COOKIE_MAX_AGE, choose_visitor_id

Headers = Mapping[str, str]
VISITOR_HEADER = "X-Stitcher-Visitor"
# 1x1 transparent GIF
PIXEL = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c000000000100010000020144003b")
_COOKIE_ATTRS = f"; Max-Age={COOKIE_MAX_AGE}; Path=/; HttpOnly; SameSite=Lax"
_COOKIE_PREFIX = COOKIE + "="
_EXPOSED = f"{VISITOR_HEADER}, Retry-After"
_JSON = ("Content-Type", "application/json")
# errors meaning "a backing store is down, slow or refusing": 503 + Retry-After, never a 500
UNAVAILABLE: tuple[type[BaseException], ...] = (RedisError, TimeoutError, ConnectionError, OSError)
log = structlog.get_logger("http")
# request ids: unique per process start plus a counter — as unique as uuid4 here, at a fraction of its cost
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


@dataclass(slots=True)
class Reply:
    """One answer: status, header pairs in order, body."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"


def request_id_from(given: str | None) -> str:
    """The caller's X-Request-Id if it is a sane one (1-``MAX_REQUEST_ID`` printable ASCII characters), else
    a new id: it is echoed in the response, written to the request's log line and its identity-log entries."""
    if given and len(given) <= MAX_REQUEST_ID and given.isascii() and given.isprintable():
        return given
    return new_request_id()


def check_encoding(headers: Headers) -> None:
    """A compressed body (any ``Content-Encoding`` but ``identity``) is a 415: no client of the service sends
    one, and bodies are never inflated (``tracker.connection``), so no bomb is."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding[:32]!r} is not accepted: send the body uncompressed")


def check_declared_length(declared: int | None, limit: int) -> None:
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"body is {declared} bytes, the limit is {limit}")


def cookie_value(header: str | None, name: str = COOKIE) -> str | None:
    """The value of cookie ``name`` in a Cookie header (the last one, as aiohttp's parser takes), without
    decoding the others."""
    if not header or name not in header:
        return None
    found = None
    for part in header.split(";"):
        key, eq, value = part.partition("=")
        if eq and key.strip() == name:
            found = value.strip().strip('"')
    return found


def error_reply(exc: BaseException, request_id: str, statuses: Mapping[type, int] | None = None,
                unavailable: tuple[type[BaseException], ...] = UNAVAILABLE, path: str = "") -> tuple[Reply, str]:
    """The JSON answer to an exception, and the error code for the request's log line.

    Domain errors (the tracker's own, or another layer's registered in ``statuses``) answer as themselves
    with their ``status`` in the body, as the platform's API does; a backing store down, slow or refusing
    becomes a 503 with Retry-After (never a 500 or a hang); anything else is logged with its traceback and
    answers 500.
    """
    status = status_of(exc, statuses)
    if status is not None:
        reply = json_reply({**exc.body(), "status": status}, status)  # type: ignore[attr-defined]
        if status in (429, 503):
            reply.headers.append(("Retry-After", str(getattr(exc, "retry_after", 1))))
        elif status == 401:
            reply.headers.append(("WWW-Authenticate", 'Basic realm="stitcher"'))
        return reply, str(exc.code)  # type: ignore[attr-defined]
    if isinstance(exc, unavailable):
        reply = json_reply({"error": "unavailable", "message": "storage is unavailable, retry shortly",
                            "status": 503}, 503)
        reply.headers.append(("Retry-After", "1"))
        return reply, type(exc).__name__
    log.exception("unhandled error", path=path, request_id=request_id)
    return json_reply({"error": "internal_error", "message": "internal error", "requestId": request_id,
                       "status": 500}, 500), "internal_error"


def status_of(exc: BaseException, statuses: Mapping[type, int] | None = None) -> int | None:
    """The HTTP status of a domain error: the tracker's own, or one another layer registered in ``statuses``
    (exception class → status); None for any other exception."""
    if isinstance(exc, DomainError):
        return exc.status
    return next((int(s) for cls, s in (statuses or {}).items() if isinstance(exc, cls)), None)


def json_reply(data: Any, status: int = 200) -> Reply:
    return Reply(status, [_JSON], orjson.dumps(data))


Answer = Callable[[Reply], None]
_TASKS: set[asyncio.Task[None]] = set()  # the beacons finishing in a task: referenced until they end


def _settle(fut: asyncio.Future[Reply], reply: Reply) -> None:
    if not fut.done():  # the front stopped waiting (its client went away)
        fut.set_result(reply)


def spawn(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` in a task kept referenced until it ends (the loop holds tasks only weakly)."""
    task = asyncio.get_running_loop().create_task(coro)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


class Tracking:
    """The beacon, the pixel, the preflight and the script, for one running service."""

    def __init__(self, *, eventlog: EventLog, metrics: Metrics, limits: Limits, script: Script,
                 allowed_origins: tuple[str, ...], log_sample: float, limiter: Limiter | None = None,
                 client: ClientAddress | None = None) -> None:
        self.eventlog = eventlog
        self.limiter = limiter  # None: no limit on tracking requests
        self.client = client or ClientAddress(())
        self.metrics = metrics
        self.limits = limits
        self.script = script
        self._any_origin = "*" in allowed_origins
        self._origins = frozenset(allowed_origins)
        # every n-th good beacon writes its request line (errors always do); 0: none
        self._log_every = round(1 / log_sample) if log_sample > 0 else 0
        self._beacons = 0

    # --- routes ------------------------------------------------------------------------------------------

    def beacon(self, headers: Headers, body: bytes, secure: bool, started: float, done: Answer,
               peer: str | None = None, forwarded: str | None = None) -> None:
        """POST /t: text/plain (sendBeacon, no preflight) or application/json; 204 once stored.

        ``body`` is the whole body, read by the front within ``limits.max_body_bytes`` (a front that finds it
        longer, or compressed, answers through ``refused``). ``done`` is called once with the answer: at once
        for a bad body, else when Redis has the events. The common beacon — all its events good — is stored
        through the group committer's callback, with no task or future of its own; the rest (bad events to
        record, events over the cap, Redis having lost the script) finish in a task.

        With a rate limit on, a good body then takes a token from the client's bucket (``peer``, or the client a
        trusted proxy names in ``forwarded``) through the same group commit, and an empty bucket answers 429
        with nothing stored; a bad body is refused without asking Redis anything.
        """
        who = self.client(peer, forwarded) if self.limiter is not None else None
        _Beacon(self, headers, started, done).start(body, secure, who)

    async def beacon_reply(self, headers: Headers, body: bytes, secure: bool, started: float,
                           peer: str | None = None, forwarded: str | None = None) -> Reply:
        """``beacon`` for a front that awaits its answer (the aiohttp route)."""
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.beacon(headers, body, secure, started, partial(_settle, fut), peer, forwarded)
        return await fut

    def refused(self, headers: Headers, exc: Exception, started: float) -> Reply:
        """POST /t refused before its body was read (too large, compressed): answered and accounted as a beacon."""
        request_id = request_id_from(headers.get("x-request-id"))
        self.metrics.count_events("malformed_request", 1)
        reply, error = error_reply(exc, request_id, path="/t")
        self._finish(headers, reply, request_id, started, error)
        return reply

    async def pixel(self, headers: Headers, d: str | None, secure: bool, peer: str | None = None,
                    forwarded: str | None = None) -> Reply:
        """GET /t.gif?d=: the beacon's body base64url-encoded in ``d``; answers a 1x1 GIF (errors raise; an
        empty bucket raises RateLimited, 429)."""
        vid, batch = self._validated(headers, decode_pixel(d))
        if self.limiter is not None:
            await self.limiter.take(TRACK, self.client(peer, forwarded))
        await self._store(vid, batch, None)
        return Reply(200, [("Content-Type", "image/gif"), ("Cache-Control", "no-store, max-age=0"),
                           *self._visitor_headers(vid, secure)], PIXEL)

    def preflight(self, headers: Headers) -> Reply:
        """OPTIONS /t."""
        reply = Reply(204)
        self.cors(headers, reply.headers)
        reply.headers += [("Access-Control-Allow-Methods", "POST, OPTIONS"),
                          ("Access-Control-Allow-Headers", "Content-Type"), ("Access-Control-Max-Age", "86400")]
        return reply

    def script_reply(self, headers: Headers) -> Reply:
        """GET /t.js: minified, gzipped to clients that accept it, with a strong ETag (304 when it matches)."""
        s = self.script
        out = [("ETag", s.etag), ("Cache-Control", "public, max-age=3600"), ("Vary", "Accept-Encoding")]
        if_none_match = headers.get("if-none-match", "")
        if s.etag in if_none_match or if_none_match.strip() == "*":
            return Reply(304, out)
        out.append(("Content-Type", "application/javascript"))
        if "gzip" in headers.get("accept-encoding", ""):
            return Reply(200, [*out, ("Content-Encoding", "gzip")], s.gzipped)
        return Reply(200, out, s.minified)

    def cors(self, headers: Headers, out: list[tuple[str, str]]) -> None:
        origin = headers.get("origin")
        if origin and (self._any_origin or origin in self._origins):
            out += [("Access-Control-Allow-Origin", origin), ("Access-Control-Allow-Credentials", "true"),
                    ("Access-Control-Expose-Headers", _EXPOSED), ("Vary", "Origin")]

    # --- the work ----------------------------------------------------------------------------------------

    def _validated(self, headers: Headers, raw: bytes) -> tuple[str, Batch]:
        """The beacon's visitor id and its events judged (400/413 for a malformed body)."""
        try:
            batch = parse_batch(raw, self.limits, int(time.time() * 1000), bot=is_bot(headers.get("user-agent", "")))
        except ValidationFailed:
            self.metrics.count_events("malformed_request", 1)
            raise
        vid, _ = choose_visitor_id(cookie_value(headers.get("cookie")), batch.vid, batch.reset)
        return vid, batch

    async def _store(self, vid: str, batch: Batch, appended: AppendResult | None) -> None:
        """Store the good events (unless ``appended`` already did) and record the bad ones. Raises 503."""
        rejected = batch.rejected
        try:
            if appended is None and batch.accepted:
                appended = await self.eventlog.append(vid, batch.accepted)
            if appended is not None:
                self._count(appended)
                rejected += [{"id": i, "reason": "visitor history is at its cap", "event": ""}
                             for i in appended.over_cap]
            if rejected:
                self.metrics.count_events("rejected", len(rejected))
                await self.eventlog.record_rejected(vid, rejected)  # bounded by the client's socket timeout
        except UNAVAILABLE as exc:
            raise Unavailable("event storage is unavailable, retry shortly") from exc

    def _count(self, appended: AppendResult) -> None:
        self.metrics.count_events("accepted", appended.stored)
        self.metrics.count_events("duplicate", appended.duplicates)

    @staticmethod
    def _visitor_headers(vid: str, secure: bool) -> list[tuple[str, str]]:
        # written by hand: http.cookies' Morsel costs more than the rest of the response (vid is a plain UUID)
        return [("Set-Cookie", f"{_COOKIE_PREFIX}{vid}{_COOKIE_ATTRS}{'; Secure' if secure else ''}"),
                (VISITOR_HEADER, vid)]

    def _finish(self, headers: Headers, reply: Reply, request_id: str, started: float, error: str | None) -> None:
        """CORS, the request id, the metrics and maybe the request line of one beacon."""
        self.cors(headers, reply.headers)
        reply.headers.append(("X-Request-Id", request_id))
        self.account("/t", "POST", reply.status, started, request_id, error)

    def account(self, route: str, method: str, status: int, started: float, request_id: str,
                error: str | None) -> None:
        """Count and time one tracking request; write its line if it failed or is sampled (one in
        1/``BEACON_LOG_SAMPLE``): a collector taking thousands a second cannot afford a line each. A 429 is
        sampled like a good beacon: a client past its rate limit must not make the log its amplifier."""
        elapsed = time.perf_counter() - started
        self.metrics.observe_request(route, method, status, elapsed)
        self._beacons += 1
        if (status != 429 and (error is not None or status >= 400)) or (
                self._log_every and self._beacons % self._log_every == 0):
            log_request(request_id, method, route, status, round(elapsed * 1000, 2), error)


class _Beacon:
    """One beacon on its way to Redis and back: what its callbacks need (no task, no future, no closures)."""

    __slots__ = ("batch", "done", "headers", "request_id", "started", "stored", "tracking", "vid", "who")

    def __init__(self, tracking: Tracking, headers: Headers, started: float, done: Answer) -> None:
        self.tracking = tracking
        self.headers = headers
        self.started = started
        self.done = done
        self.request_id = request_id_from(headers.get("x-request-id"))

    def start(self, body: bytes, secure: bool, who: str | None) -> None:
        """Validate; then take a token from ``who``'s bucket (None: no limit) and store."""
        tracking = self.tracking
        try:
            self.vid, self.batch = tracking._validated(self.headers, body)
        except Exception as exc:  # answered as JSON the browser can read (CORS)
            self.failed(exc)
            return
        self.stored = Reply(204, tracking._visitor_headers(self.vid, secure))
        if who is not None:
            assert tracking.limiter is not None
            self.who = who
            tracking.limiter.take_callback(TRACK, who, self.checked)
        else:
            self.store()

    def store(self) -> None:
        tracking = self.tracking
        if self.batch.rejected or tracking.eventlog.committer is None:
            spawn(self.slowly(None))
        else:
            tracking.eventlog.append_callback(self.vid, self.batch.accepted, self.appended)

    def checked(self, reply: Any) -> None:
        """The rate limiter's outcome (``Limiter.wait_ms`` reads it; a failing limiter lets the beacon on)."""
        if reply == 0 and reply.__class__ is int:  # a token: the common case, first
            self.store()
            return
        limiter = self.tracking.limiter
        assert limiter is not None
        if is_noscript(reply):  # Redis lost the script (a restart): loaded, then the token is taken again
            limiter.take_again_callback(TRACK, self.who, self.checked_again)
            return
        self.checked_again(reply)

    def checked_again(self, reply: Any) -> None:
        limiter = self.tracking.limiter
        assert limiter is not None
        wait = limiter.wait_ms(reply)
        if wait:
            self.tracking.metrics.count_events("rate_limited_request", 1)
            self.failed(RateLimited(retry_after(wait), str(limiter.track)))
        else:
            self.store()

    def appended(self, reply: Any) -> None:
        """The group commit's outcome: APPEND's reply, or an exception."""
        if isinstance(reply, BaseException):
            if is_noscript(reply):
                spawn(self.slowly(None))  # nothing ran: append loads the script and sends them again
            else:
                self.failed(reply)
            return
        appended = append_result(reply, self.batch.accepted)
        if appended.over_cap:
            spawn(self.slowly(appended))  # the events over the cap are recorded as rejected
            return
        self.tracking._count(appended)
        self.answer(self.stored)

    async def slowly(self, appended: AppendResult | None) -> None:
        try:
            await self.tracking._store(self.vid, self.batch, appended)
        except Exception as exc:
            self.failed(exc)
        else:
            self.answer(self.stored)

    def failed(self, exc: BaseException) -> None:
        if isinstance(exc, UNAVAILABLE):
            exc = Unavailable("event storage is unavailable, retry shortly")
        self.answer(*error_reply(exc, self.request_id, path="/t"))

    def answer(self, reply: Reply, error: str | None = None) -> None:
        self.tracking._finish(self.headers, reply, self.request_id, self.started, error)
        self.done(reply)


def is_secure(scheme_is_https: bool, headers: Headers) -> bool:
    """Whether the visitor's connection is HTTPS (directly, or as a proxy in front says)."""
    return scheme_is_https or headers.get("x-forwarded-proto") == "https"

