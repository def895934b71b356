"""structlog set-up: JSON lines off a terminal, readable lines on one; request context via contextvars."""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from typing import Any, BinaryIO

import orjson
import structlog


class BufferedLines:
    """JSON log lines written in bulk: at most ``MAX_DELAY`` late, at once for warnings and errors.

    structlog's BytesLogger writes and flushes every line — a system call per request on the beacon path,
    which cost more than the rest of the log line. ``flush()`` also runs from a timer and at exit.
    """

    MAX_BYTES = 64 * 1024
    MAX_DELAY = 0.25  # seconds

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._since = 0.0

    def msg(self, message: bytes) -> None:
        if not self._buffer:
            self._since = time.monotonic()
        self._buffer += message
        self._buffer += b"\n"
        if len(self._buffer) > self.MAX_BYTES or time.monotonic() - self._since > self.MAX_DELAY:
            self.flush()

    def urgent(self, message: bytes) -> None:
        self.msg(message)
        self.flush()

    debug = info = msg
    warning = warn = error = err = exception = critical = fatal = failure = urgent

    def flush(self) -> None:
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            self._stream.write(data)
            self._stream.flush()


OUTPUT = BufferedLines(sys.stderr.buffer)
atexit.register(OUTPUT.flush)


def _buffered_output(*args: Any) -> BufferedLines:
    return OUTPUT


async def flush_periodically() -> None:
    """Flush lines written while the service is idle (started and cancelled with the app)."""
    while True:
        await asyncio.sleep(BufferedLines.MAX_DELAY)
        OUTPUT.flush()


def configure_logging(json: bool | None = None, level: int = logging.INFO) -> None:
    """Configure structlog once per process. ``json=None`` picks JSON when stderr is not a terminal."""
    if json is None:
        json = not sys.stderr.isatty()
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json:
        processors += [structlog.processors.format_exc_info,
                       structlog.processors.JSONRenderer(serializer=orjson.dumps)]
        factory: Any = _buffered_output
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
        factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
