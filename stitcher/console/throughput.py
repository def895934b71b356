"""Events per minute for the overview, from the service's own Prometheus counters.

The counters only grow; a sampler reads them every few seconds and adds what they grew by to the bucket of
the current minute, in a ring of the last ``MINUTES`` minutes kept in memory — per process, lost on restart
(the counters themselves start at zero then). A gap between samples lands in the minute of the next one.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from tracker.metrics import Metrics

MINUTES = 60
SAMPLE_S = 5.0
# column → (Prometheus sample, labels): what the overview counts per minute
SERIES: Mapping[str, tuple[str, dict[str, str]]] = {
    "received": ("stitcher_tracker_events_total", {"result": "accepted"}),
    "rejected": ("stitcher_tracker_events_total", {"result": "rejected"}),
    "stitched": ("stitcher_stitched_events_total", {}),
    "worker": ("stitcher_worker_events_total", {}),
}


def read_counters(metrics: Metrics) -> dict[str, float]:
    """The current totals of ``SERIES`` (0 for a label nothing has been counted under yet)."""
    return {name: metrics.registry.get_sample_value(sample, labels) or 0.0
            for name, (sample, labels) in SERIES.items()}


class MinuteRing:
    """Per-minute increments of counters read by ``read`` (which returns their running totals)."""

    def __init__(self, read: Callable[[], Mapping[str, float]], minutes: int = MINUTES) -> None:
        self.read = read
        self.minutes = minutes
        self._last = dict(read())
        self._buckets: OrderedDict[int, dict[str, float]] = OrderedDict()

    def sample(self, now: float | None = None) -> None:
        """Add what each counter grew by since the last sample to the current minute."""
        minute = int((time.time() if now is None else now) // 60)
        current = dict(self.read())
        bucket = self._buckets.setdefault(minute, dict.fromkeys(current, 0.0))
        for name, total in current.items():
            bucket[name] = bucket.get(name, 0.0) + max(0.0, total - self._last.get(name, 0.0))
        self._last = current
        while len(self._buckets) > self.minutes or next(iter(self._buckets)) <= minute - self.minutes:
            self._buckets.popitem(last=False)

    def rows(self, now: float | None = None, last: int = 15) -> list[tuple[int, dict[str, int]]]:
        """The last ``last`` minutes, newest first, as (minute start in ms, counts); quiet minutes count 0."""
        minute = int((time.time() if now is None else now) // 60)
        names = list(self._last)
        return [(m * 60_000, {n: int(self._buckets.get(m, {}).get(n, 0)) for n in names})
                for m in range(minute, minute - last, -1)]

    async def run(self, every_s: float = SAMPLE_S) -> None:
        """Sample forever (a task started and cancelled by the app)."""
        while True:
            await asyncio.sleep(every_s)
            self.sample()
