"""Prometheus metrics of one service instance (its own registry, so tests can build many apps)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    """Every metric the service exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._event_children: dict[str, Any] = {}
        r = self.registry
        self.requests = Counter("stitcher_http_requests", "HTTP requests answered",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("stitcher_http_request_duration_seconds", "HTTP request latency",
                                 ["route"], registry=r,
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.events = Counter("stitcher_tracker_events", "Beacon events by result", ["result"], registry=r)
        self.batch_size = Histogram("stitcher_redis_write_batch_size",
                                    "Commands per coalesced Redis pipeline (group commit)", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.stitched = Counter("stitcher_stitched_events", "Anonymous events moved onto timelines",
                                registry=r)
        self.drained = Counter("stitcher_worker_events", "Linked-visitor events put on timelines by the worker",
                               registry=r)

    def count_events(self, result: str, n: int) -> None:
        """Count beacon events by result (accepted, duplicate, rejected, malformed_request)."""
        if n:
            child = self._event_children.get(result)
            if child is None:
                child = self._event_children[result] = self.events.labels(result)
            child.inc(n)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count and time one request; label children are looked up once per (route, method, status)."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, status), self.latency.labels(route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
