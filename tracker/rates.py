"""Rate limit settings: ``N/PERIOD[:BURST]`` parsed into a token bucket's shape (``tracker.ratelimit`` uses it)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*(?::\s*(\d+)\s*)?$")


@dataclass(frozen=True)
class Rate:
    """A token bucket's shape: at most ``burst`` requests at once, ``per_second`` sustained."""

    burst: int
    per_second: float

    def __str__(self) -> str:
        return f"{self.per_second:g}/s, burst {self.burst}"


def parse_rate(text: str | None, name: str = "rate") -> Rate | None:
    """``N/PERIOD[:BURST]``: N requests per PERIOD sustained (``10s``, ``1m``, ``500ms``, ``h``; a bare number
    is seconds), and at most BURST at once (default N). ``100/10s`` is a bucket of 100 refilled at 10 a
    second; ``100/10s:300`` the same rate with room for 300. Empty, ``0`` or ``off``: no limit (None)."""
    if text is None or text.strip().lower() in ("", "0", "off", "none"):
        return None
    match = _SPEC.match(text)
    if match is None:
        raise ValueError(f"{name}: {text!r} is not N/PERIOD[:BURST], e.g. 100/10s or 20/1s:200")
    count, amount, unit, burst = match.groups()
    seconds = (float(amount) if amount else 1.0) * _UNITS[unit or "s"]
    if int(count) == 0:
        return None
    if seconds <= 0:
        raise ValueError(f"{name}: {text!r} has a period of zero")
    rate = Rate(int(burst) if burst else int(count), int(count) / seconds)
    if rate.burst < 1:
        raise ValueError(f"{name}: {text!r} allows no request at all (burst 0); use 0 or off for no limit")
    return rate
