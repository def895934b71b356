"""structlog set-up: JSON lines off a terminal, readable lines on one; request context via contextvars."""

from __future__ import annotations

import logging
import sys

import orjson
import structlog


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
        factory: structlog.typing.WrappedLogger = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
        factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
