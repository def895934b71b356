"""Points in time a client sends (an order's ``date``, an event's ``occurred``), read one way: ISO 8601, or
seconds since the epoch where a field allows it, to Unix milliseconds within sane years."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

MIN_YEAR, MAX_YEAR = 1970, 2200
MAX_ISO_CHARS = 64


class BadInstant(ValueError):
    """The value is no time the field accepts; the message says what is expected."""


def read_instant(value: Any, *, epoch: bool = False, latest_ms: int | None = None) -> int:
    """``value`` as Unix ms: an ISO 8601 string (``2020-05-14``, ``2020-05-14T10:11``,
    ``2017-05-14T10:11:10.7022176+03:00``; without an offset it is UTC), or with ``epoch`` also a JSON
    number of seconds since 1970. Between the years ``MIN_YEAR`` and ``MAX_YEAR`` in UTC, and not after
    ``latest_ms`` when it is given. Raises ``BadInstant``."""
    if epoch and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or not 0 <= value < (datetime(MAX_YEAR + 1, 1, 1, tzinfo=UTC).timestamp()):
            raise BadInstant(f"must be seconds since 1970 before the year {MAX_YEAR + 1} (not milliseconds)")
        ms = int(value * 1000)
    else:
        ms = _iso(value, "or seconds since 1970" if epoch else "")
    if latest_ms is not None and ms > latest_ms:
        raise BadInstant("must not be in the future")
    return ms


def _iso(value: Any, alternative: str) -> int:
    message = " ".join(filter(None, ("must be an ISO 8601 date and time, e.g. 2017-05-14T10:11:10+03:00,",
                                     alternative)))
    if not isinstance(value, str) or len(value) > MAX_ISO_CHARS:
        raise BadInstant(message.rstrip(","))
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadInstant(message.rstrip(",")) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        year = parsed.astimezone(UTC).year
    except OverflowError:  # 0001-01-01T00:00+14:00, 9999-12-31T23:59-14:00: the UTC instant fits no datetime
        year = MIN_YEAR - 1
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise BadInstant(f"must be between the years {MIN_YEAR} and {MAX_YEAR}")
    return int(parsed.timestamp() * 1000)
