"""How aiohttp's HTTP parser is set up for this service: a request line up to 64 KiB, bodies left as sent
(never decompressed), and a log for the requests it refuses before any handler runs.

aiohttp refuses a request line or header past 8,190 bytes itself, with a plain-text 400, and logs the
refusal with a traceback and the start of the offending line — a query's email or phone included. With a
64 KiB request line a 10,000-character id in a path or query reaches the handlers (and their JSON 4xx);
headers keep aiohttp's 8,190 bytes (up to 128 of them: a larger limit would multiply what one request may
hold). What the parser still refuses is logged as one line naming the error's class, never the bytes.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

MAX_LINE_BYTES = 64 * 1024
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
