"""The hot-path metrics export what prometheus_client's own metric objects would for the same data."""

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from tracker.metrics import LATENCY_BUCKETS, Metrics


def _samples(text: bytes) -> set[str]:
    """Sample lines, without HELP/TYPE comments and the *_created timestamps only real objects carry."""
    return {line for line in text.decode().splitlines() if line and not line.startswith("#")
            and "_created" not in line}


def test_requests_latency_and_events_match_prometheus_client_objects() -> None:
    ours = Metrics()
    registry = CollectorRegistry()
    requests = Counter("stitcher_http_requests", "", ["route", "method", "status"], registry=registry)
    latency = Histogram("stitcher_http_request_duration_seconds", "", ["route"], registry=registry,
                        buckets=LATENCY_BUCKETS)
    events = Counter("stitcher_tracker_events", "", ["result"], registry=registry)
    batch = Histogram("stitcher_redis_write_batch_size", "", registry=registry,
                      buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
    observations = [("/t", "POST", 204, 0.0004), ("/t", "POST", 204, 0.001), ("/t", "POST", 400, 0.03),
                    ("/api/v1/contact", "POST", 200, 7.0), ("/t", "POST", 204, 0.0025)]
    for route, method, status, seconds in observations:
        ours.observe_request(route, method, status, seconds)
        requests.labels(route, method, status).inc()
        latency.labels(route).observe(seconds)
    for result, n in [("accepted", 3), ("rejected", 1), ("accepted", 2), ("duplicate", 0)]:
        ours.count_events(result, n)
        if n:
            events.labels(result).inc(n)
    for size in (1, 1, 3, 256, 300):
        ours.observe_batch(size)
        batch.observe(size)
    expected = _samples(generate_latest(registry))
    got = _samples(ours.render())
    assert got >= expected
    assert 'stitcher_http_requests_total{method="POST",route="/t",status="204"} 3.0' in got
    assert 'stitcher_http_request_duration_seconds_bucket{le="0.001",route="/t"} 2.0' in got
    assert 'stitcher_redis_write_batch_size_bucket{le="+Inf"} 5.0' in got


def test_hot_path_metric_names_are_registered_and_guarded() -> None:
    """The collector describes its families, so a second metric of the same name is refused."""
    import pytest

    metrics = Metrics()
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("stitcher_http_requests", "", registry=metrics.registry)
