"""The HTTP edge shared by every route: request ids, one log line per request, metrics, JSON errors, auth."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web

from tracker import connection
from tracker.answers import Reply, check_declared_length, check_encoding, error_reply, request_id_from, status_of
from tracker.apikeys import KeyRing
from tracker.errors import DomainError, PayloadTooLarge, RequestTimeout
from tracker.logs import log_request
from tracker.metrics import Metrics
from tracker.scopes import Scope, needs_of

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METRICS = web.AppKey("metrics", Metrics)
API_KEYS = web.AppKey("api_keys", KeyRing)
REQUEST_ID = web.RequestKey("request_id", str)  # the id a request is answered and logged with
API_KEY = web.RequestKey("api_key", str)  # the key an /api request was let in with (``check_access``)
# errors meaning "a backing store is down, slow or refusing": answered 503 + Retry-After, never 500; the
# stitcher adds its SQL ones (the tracker itself never imports SQLAlchemy, DESIGN invariant 1)
UNAVAILABLE = web.AppKey("unavailable_errors", tuple)
# the statuses of other layers' errors (exception class → HTTP status; each has ``code`` and ``body()``): the
# stitcher registers its domain errors here, so that they need know nothing of HTTP
ERROR_STATUS = web.AppKey("error_status", dict)
log = structlog.get_logger("http")
# handlers that do the edge's work themselves (the beacon: there the generic path would cost about as much
# as storing the events); see ``self_accounted``
_SELF_ACCOUNTED: set[Handler] = set()


def request_id_of(request: web.Request) -> str:
    """The request's id (``tracker.answers.request_id_from``)."""
    return request_id_from(request.headers.get("X-Request-Id"))


def self_accounted(handler: Handler) -> Handler:
    """Mark a handler that binds no log context and itself answers errors as JSON, sets X-Request-Id and
    calls ``account``: the edge middleware passes its requests straight through.

    The route's own handler is looked up in the request's match, so middlewares inside ``edge_middleware``
    (``tracker.apilimit``) do not hide it; such a middleware must pass these requests straight through too.
    """
    _SELF_ACCOUNTED.add(handler)
    return handler


def account(request: web.Request, route: str, status: int, started: float, request_id: str,
            error: str | None = None) -> None:
    """Count, time and log one answered request: the metrics and the canonical log line."""
    elapsed = time.perf_counter() - started
    request.app[METRICS].observe_request(route, request.method, status, elapsed)
    log_request(request_id, request.method, route, status, round(elapsed * 1000, 2), error)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json",
                        headers=headers)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body; PayloadTooLarge (413) if it declares or turns out to be longer than ``limit`` bytes,
    read no further than that (``read(n)`` returns what has arrived so far). A compressed body (any
    ``Content-Encoding`` but ``identity``) is a 415: no client of the service compresses one, and the parser
    leaves bodies encoded (``tracker.connection``), so no bomb is inflated. A body still arriving
    ``connection.BODY_SECONDS`` after the first read is a 408 (a slow-loris client holds no handler for long)."""
    check_encoding(request.headers)
    expected = request.content_length
    check_declared_length(expected, limit)
    chunks: list[bytes] = []
    size = 0
    seconds = connection.BODY_SECONDS
    try:
        async with asyncio.timeout(seconds):
            while size <= limit and (expected is None or size < expected):
                chunk = await request.content.read(limit + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {seconds:g} s") from None
    if size > limit:
        raise PayloadTooLarge(f"body is larger than the limit of {limit} bytes")
    return b"".join(chunks)


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """A JSON error body carrying its HTTP ``status`` beside ``error`` and ``message``, as the platform's API
    does (``tracker.answers.error_reply`` writes the same shape for exceptions)."""
    return json_response({"error": code, "message": message, **extra, "status": status}, status=status)


def error_answer(request: web.Request, exc: Exception, request_id: str) -> tuple[web.Response, str]:
    """The JSON answer to an exception a handler raised, and the error code for its request line
    (``tracker.answers.error_reply``, with the error classes other layers registered)."""
    reply, code = error_reply(exc, request_id, request.app.get(ERROR_STATUS), request.app[UNAVAILABLE],
                              request.path)
    return to_response(reply), code


def to_response(reply: Reply) -> web.Response:
    return web.Response(status=reply.status, body=reply.body or None, headers=reply.headers)


def error_status(app: web.Application, exc: Exception) -> int | None:
    """The HTTP status of a domain error (the tracker's own, or one another layer registered), else None."""
    return status_of(exc, app.get(ERROR_STATUS))


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    # a path's trailing-slash twin (tracker.routing) is logged and counted as the path itself
    return (resource.canonical.rstrip("/") or "/") if resource is not None else "unmatched"


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Binds a request id, times the request, translates errors into JSON and writes the canonical log line.

    Redis being down or slow becomes a 503 with Retry-After, never a 500 or a hang.
    """
    if request.match_info.handler in _SELF_ACCOUNTED:
        return await handler(request)
    started = time.perf_counter()
    request_id = request[REQUEST_ID] = request_id_of(request)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    error: str | None = None
    try:
        if request.path.startswith("/api/"):  # every /api route needs a key; tracking routes are public
            check_access(request)
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            response = error_response(exc.status, exc.reason.lower().replace(" ", "_"),
                                      exc.text or exc.reason)
            for name in ("Allow", "Location"):
                if name in exc.headers:
                    response.headers[name] = exc.headers[name]
        else:
            raise
    except Exception as exc:
        response, error = error_answer(request, exc, request_id)
    response.headers["X-Request-Id"] = request_id
    account(request, _route(request), response.status, started, request_id, error)
    return response


def check_access(request: web.Request) -> None:
    """HTTP Basic auth, any user name, an API key as the password, holding the scope the route needs
    (``tracker.scopes.ROUTE_SCOPES``): a JSON 401 without a known key, a 403 without the scope; both name it."""
    resource = request.match_info.route.resource
    scope = needs_of(request.method, resource.canonical if resource is not None else None).scope_for(request.query)
    held = request.app[API_KEYS].scopes_of(basic_auth_password(request.headers.get("Authorization", "")))
    if held is None:
        raise _Unauthorized(scope)
    if scope is not None and scope not in held:
        raise Forbidden(scope)
    request[API_KEY] = basic_auth_password(request.headers.get("Authorization", ""))


def basic_auth_password(header: str) -> str:
    """The password of a ``Basic`` Authorization header, or "" when absent or malformed."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except ValueError:  # binascii.Error, UnicodeDecodeError, and a str that is not ASCII ("Basic é")
        return ""
    return decoded.partition(":")[2]


class _Unauthorized(DomainError):
    status = 401
    code = "unauthorized"

    def __init__(self, scope: Scope | None = None) -> None:
        extra = {"scope": scope.value} if scope is not None else {}
        super().__init__("HTTP Basic auth with an API key as the password is required"
                         + (f" (a key holding the {scope.value!r} scope)" if scope is not None else ""), **extra)


class Forbidden(DomainError):
    """The key is known but does not hold the scope this request needs."""

    status = 403
    code = "forbidden"

    def __init__(self, scope: Scope) -> None:
        super().__init__(f"this API key does not hold the {scope.value!r} scope this request needs",
                         scope=scope.value)
