"""Prometheus metrics of one service instance (its own registry, so tests can build many apps).

The per-request figures (requests, latency, beacon events, write batch sizes) are counted in plain Python
ints on the hot path and turned into Prometheus families only when ``/metrics`` is scraped, by a custom
collector — prometheus_client's own ``Counter.inc`` / ``Histogram.observe`` take a lock and cost more than a
microsecond each, several times per beacon. Rare figures use prometheus_client's metric objects directly.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Histogram:
    """Bucket counts (non-cumulative, last one is +Inf) and the sum of the observed values."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # bisect_left: a value equal to a bound is "le"
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, labelled as prometheus_client's own Histogram labels them."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
        return out


class _HotPath(Collector):
    """Counts kept by the request path, exported at scrape time."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, _Histogram] = {}
        self.events: dict[str, int] = {}
        self.batch_size = _Histogram(BATCH_BUCKETS)

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, HistogramMetricFamily, CounterMetricFamily,
                             HistogramMetricFamily]:
        return (CounterMetricFamily("stitcher_http_requests", "HTTP requests answered",
                                    labels=["route", "method", "status"]),
                HistogramMetricFamily("stitcher_http_request_duration_seconds", "HTTP request latency",
                                      labels=["route"]),
                CounterMetricFamily("stitcher_tracker_events", "Beacon events by result", labels=["result"]),
                HistogramMetricFamily("stitcher_redis_write_batch_size",
                                      "Commands per coalesced Redis pipeline (group commit)"))

    def describe(self) -> Iterator[Metric]:
        """The families without samples, so the registry knows (and guards) their names."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        requests, latency, events, batch = self._families()
        for (route, method, status), n in list(self.requests.items()):
            requests.add_metric([route, method, str(status)], n)
        for route, h in list(self.latency.items()):
            latency.add_metric([route], h.buckets(), h.total)
        for result, n in list(self.events.items()):
            events.add_metric([result], n)
        batch.add_metric([], self.batch_size.buckets(), self.batch_size.total)
        yield from (requests, latency, events, batch)


class Metrics:
    """Every metric the service exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._hot = _HotPath()
        self.registry.register(self._hot)
        self.stitched = Counter("stitcher_stitched_events", "Anonymous events moved onto timelines",
                                registry=self.registry)
        self.drained = Counter("stitcher_worker_events", "Linked-visitor events put on timelines by the worker",
                               registry=self.registry)
        self.limiter_errors = Counter("stitcher_rate_limiter_errors",
                                      "Requests let through unlimited because the rate limiter's Redis failed",
                                      registry=self.registry)

    def count_events(self, result: str, n: int) -> None:
        """Count beacon events by result (accepted, duplicate, rejected, malformed_request)."""
        if n:
            events = self._hot.events
            events[result] = events.get(result, 0) + n

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count and time one request."""
        requests = self._hot.requests
        key = (route, method, status)
        requests[key] = requests.get(key, 0) + 1
        latency = self._hot.latency.get(route)
        if latency is None:
            latency = self._hot.latency[route] = _Histogram(LATENCY_BUCKETS)
        latency.observe(seconds)

    def observe_batch(self, commands: int) -> None:
        """One group-commit pipeline of ``commands`` Redis commands was written."""
        self._hot.batch_size.observe(commands)

    def render(self) -> bytes:
        return generate_latest(self.registry)
