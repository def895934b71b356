"""How aiohttp's HTTP parser is set up for this service: a request line up to 64 KiB, bodies left as sent
(never decompressed), a log for the requests it refuses before any handler runs, and JSON answers to them.

aiohttp refuses a request line or header past 8,190 bytes itself, with a plain-text 400, and logs the
refusal with a traceback and the start of the offending line — a query's email or phone included. With a
64 KiB request line a 10,000-character id in a path or query reaches the handlers (and their JSON 4xx);
headers keep aiohttp's 8,190 bytes (up to 128 of them: a larger limit would multiply what one request may
hold). What the parser still refuses is logged as one line naming the error's class, never the bytes, and
answered as JSON like every other error (``JsonErrors``): 431 for a header too long or too many headers,
414 for a request line too long, 400 for the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

MAX_LINE_BYTES = 64 * 1024
MAX_HEADERS, MAX_FIELD_BYTES = 128, 8190  # aiohttp's own limits, kept
# a body must have arrived this long after its handler began reading it (``tracker.http.read_body``): aiohttp
# has no such bound, so a client trickling a body a byte at a time would hold a handler forever. 16 MiB (the
# largest body, an import) in 60 s asks ~280 KB/s of a client; the edge bounds the head (REQUEST_SECONDS).
BODY_SECONDS = 60.0
log = structlog.get_logger("http")


class ParserLog:
    """Stands in for aiohttp's ``aiohttp.server`` logger in its request handler (``debug``, ``exception``)."""

    def debug(self, *args: Any, exc_info: BaseException | None = None, **kw: Any) -> None:
        pass  # aiohttp's debug notes (e.g. non-HTTP bytes on the port) carry the request's bytes too

    def exception(self, message: str, *args: Any, exc_info: BaseException | None = None, **kw: Any) -> None:
        if isinstance(exc_info, HttpProcessingError | RequestPayloadError):  # a client's malformed bytes
            log.warning("request refused by the HTTP parser", error=type(exc_info).__name__)
        else:  # a fault of the service outside the handlers: keep its traceback
            log.error(message % args if args else message, exc_info=exc_info)


# auto_decompress off: a Content-Encoding reaches tracker.http.read_body as sent, which answers it 415
HANDLER_ARGS: dict[str, Any] = {"max_line_size": MAX_LINE_BYTES, "logger": ParserLog(), "auto_decompress": False}


class JsonErrors(RequestHandler):
    """aiohttp's connection handler answering the errors it raises itself — what its parser refuses before
    any handler runs, and a failure outside the handlers — as JSON (``{"error", "message", "status"}``, the
    shape of every other error) instead of plain text."""

    __slots__ = ()  # the layout of RequestHandler, so that ``json_errors`` can re-class its instances

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs (ParserLog); raises if an answer has begun
        status, code, text = parser_refusal(exc) if status < 500 else (status, "internal_error",
                                                                          "the service failed to answer")
        response = web.Response(status=status, content_type="application/json",
                                body=orjson.dumps({"error": code, "message": text, "status": status}))
        response.force_close()
        return response


def parser_refusal(exc: BaseException | None) -> tuple[int, str, str]:
    """The status, error code and message of a request aiohttp's parser refused; never the request's bytes."""
    if isinstance(exc, LineTooLong):
        if exc.args[1:2] == (MAX_LINE_BYTES,):
            return 414, "uri_too_long", f"the request line is longer than {MAX_LINE_BYTES} bytes"
        return 431, "request_header_fields_too_large", f"a header is longer than {MAX_FIELD_BYTES} bytes"
    if isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
        return 431, "request_header_fields_too_large", f"more than {MAX_HEADERS} headers"
    return 400, "bad_request", "malformed HTTP request"


def json_errors(server: web.Server) -> Callable[[], RequestHandler]:
    """A protocol factory for ``server``'s connections whose own errors are answered as JSON.

    aiohttp makes its handler class itself (``Server.__call__``); its instance is re-classed to ``JsonErrors``,
    which adds no state, rather than rebuilt from the server's private arguments."""

    def make() -> RequestHandler:
        handler = server()
        handler.__class__ = JsonErrors
        return handler

    return make
