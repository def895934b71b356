"""One person's story as the console shows it: the timeline and the identity log woven into one list, the
anonymous part told apart, and the activity chart's geometry. Pure: rows in, what the templates draw out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from stitcher.store.console import DAY_MS

CHART_DAYS = 60  # the chart ends on the last active day and goes back at most this far
# identity-log detail fields that name another contact: the console links them
CONTACT_FIELDS = ("mergedContactId", "intoContactId", "fromContactId", "toContactId")
_ENTRY_KEYS = {"id", "type", "time", "receivedAt", "source", "visitorId"}
_SUMMARY_KEYS = ("title", "url", "ref")


@dataclass(frozen=True)
class Row:
    """One line of the woven timeline: a timeline event or an identity change."""

    time: int
    kind: str  # "event" | "identity"
    title: str  # the event type, or the identity action
    source: str  # web | api | order | message | … for events; "identity" for identity changes
    anonymous: bool = False
    visitor_id: str | None = None
    summary: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    links: dict[str, int] = field(default_factory=dict)  # detail field → contact id it names


def is_anonymous(entry: Mapping[str, Any], first_links: Mapping[str, int]) -> bool:
    """A web event its visitor sent before anybody had linked that visitor: from before they were known."""
    vid = entry.get("visitorId")
    if entry.get("source") != "web" or not vid:
        return False
    linked = first_links.get(vid)
    return linked is None or int(entry["receivedAt"]) < linked


def event_row(entry: Mapping[str, Any], first_links: Mapping[str, int]) -> Row:
    """A timeline entry (as ``views.timeline`` gives it); an unknown source renders like any other."""
    data = {k: v for k, v in entry.items() if k not in _ENTRY_KEYS}
    summary = " · ".join(str(data.pop(k)) for k in _SUMMARY_KEYS if isinstance(data.get(k), str | int))
    return Row(time=int(entry["time"]), kind="event", title=str(entry.get("type", "")),
               source=str(entry.get("source", "")), anonymous=is_anonymous(entry, first_links),
               visitor_id=entry.get("visitorId"), summary=summary, details=data)


def identity_row(entry: Mapping[str, Any]) -> Row:
    """An identity-log entry (as ``views.identity_log`` gives it); ids of other contacts become links."""
    details = {k: v for k, v in entry.items() if k not in ("action", "at")}
    links = {k: v for k, v in details.items() if k in CONTACT_FIELDS and isinstance(v, int)}
    vid = details.get("visitorId")
    return Row(time=int(entry["at"]), kind="identity", title=str(entry["action"]), source="identity",
               visitor_id=vid if isinstance(vid, str) else None, details=details, links=links)


def weave(events: Sequence[Row], identity: Iterable[Row], after: int | None, until: int | None) -> list[Row]:
    """One page of the story: its timeline events and the identity changes in the same stretch of time,
    ``(after, until]`` (None: open), oldest first; at the same millisecond the event comes first."""
    inside = [r for r in identity if (after is None or r.time > after) and (until is None or r.time <= until)]
    return sorted([*events, *inside], key=lambda r: (r.time, r.kind == "identity"))


@dataclass(frozen=True)
class Bar:
    x: int
    day: str
    anonymous: int
    known: int
    anonymous_height: float
    known_height: float


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bar_width: int
    peak: int
    bars: list[Bar]


def chart(per_day: Iterable[tuple[int, bool, int]], height: int = 80, bar_width: int = 8) -> Chart | None:
    """Daily bars, anonymous stacked under known, for the days up to the last active one (None: no events)."""
    counts: dict[int, list[int]] = {}
    for day, anon, n in per_day:
        counts.setdefault(day, [0, 0])[0 if anon else 1] += n
    if not counts:
        return None
    last = max(counts)
    first = max(min(counts), last - CHART_DAYS + 1)
    peak = max(a + k for d, (a, k) in counts.items() if d >= first)
    bars = []
    for i, day in enumerate(range(first, last + 1)):
        anonymous, known = counts.get(day, [0, 0])
        bars.append(Bar(x=i * (bar_width + 2), day=day_label(day), anonymous=anonymous, known=known,
                        anonymous_height=round(height * anonymous / peak, 1),
                        known_height=round(height * known / peak, 1)))
    return Chart(width=len(bars) * (bar_width + 2), height=height, bar_width=bar_width, peak=peak, bars=bars)


def day_label(day: int) -> str:
    return datetime.fromtimestamp(day * DAY_MS / 1000, UTC).strftime("%Y-%m-%d")


def when(ms: int) -> str:
    """A time as the console prints it (UTC, to the second)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
