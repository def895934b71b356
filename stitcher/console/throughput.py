"""Events per minute for the overview, whole across the service's processes.

Each process counts in its own Prometheus counters, which only grow. A sampler in every process reads them
every few seconds and adds what they grew by to the current minute's hash in Redis (``HINCRBY``, one
pipeline, the keys of one hash slot); the overview reads the last minutes back, so several ``--reuse-port``
processes show one sum and a restart loses at most a process's last few seconds. A sample Redis did not
take is kept and sent with the next one (it then lands in that one's minute). Minutes expire after
``MINUTES``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from tracker.keys import PREFIX
from tracker.metrics import Metrics

log = structlog.get_logger("console")
MINUTES = 60
SAMPLE_S = 5.0
KEY = PREFIX + ":{console}:minute:"  # + the minute since the epoch: a hash of counts by column
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


class Growth:
    """What counters read by ``read`` (their running totals) grew by since it was last sent."""

    def __init__(self, read: Callable[[], Mapping[str, float]]) -> None:
        self.read = read
        self._sent = dict(read())

    def pending(self) -> tuple[dict[str, int], dict[str, float]]:
        """The growth not sent yet (only what grew) and the totals to ``sent`` once Redis took it."""
        current = dict(self.read())
        return ({n: int(v - self._sent.get(n, 0.0)) for n, v in current.items()
                 if int(v - self._sent.get(n, 0.0)) > 0}, current)

    def sent(self, totals: dict[str, float]) -> None:
        self._sent = totals


def minute_of(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // 60)


class SharedMinutes:
    """This process's growth added to Redis per minute, and every process's minutes read back."""

    def __init__(self, redis: Any, read: Callable[[], Mapping[str, float]], minutes: int = MINUTES) -> None:
        self.redis, self.growth, self.minutes = redis, Growth(read), minutes

    async def sample(self, now: float | None = None) -> None:
        """Add this process's growth since the last sample to the current minute in Redis."""
        grown, totals = self.growth.pending()
        if grown:
            key = f"{KEY}{minute_of(now)}"
            async with self.redis.pipeline(transaction=False) as pipe:
                for name, n in grown.items():
                    pipe.hincrby(key, name, n)
                pipe.expire(key, (self.minutes + 2) * 60)
                await pipe.execute()
        self.growth.sent(totals)

    async def rows(self, now: float | None = None, last: int = 15) -> list[tuple[int, dict[str, int]]]:
        """The last ``last`` minutes, newest first, as (minute start in ms, counts); quiet minutes count 0."""
        minute = minute_of(now)
        wanted = range(minute, minute - last, -1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for m in wanted:
                pipe.hgetall(f"{KEY}{m}")
            found = await pipe.execute()
        return [(m * 60_000, {n: int(counts.get(n.encode(), counts.get(n, 0))) for n in SERIES})
                for m, counts in zip(wanted, found, strict=True)]

    async def run(self, every_s: float = SAMPLE_S) -> None:
        """Sample forever (a task started and cancelled by the app); Redis away: the growth waits."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.sample()
            except Exception as exc:  # the next sample sends this one's growth too
                log.warning("console minutes not sent", error=type(exc).__name__)
