"""Which Redis a URL names: one server or a cluster, and a cluster URL's seeds and credentials."""

from __future__ import annotations

import pytest

from tracker.redis_client import is_cluster, parse_cluster_url
from tracker.settings import Settings


@pytest.mark.parametrize(("url", "cluster"), [
    ("redis://127.0.0.1:6379/0", False), ("rediss://cache:6380", False), ("unix:///tmp/redis.sock", False),
    ("redis+cluster://10.0.0.1:7000", True), ("REDISS+CLUSTER://cache:7000", True),
])
def test_the_scheme_says_whether_a_url_names_a_cluster(url: str, cluster: bool) -> None:
    """``redis+cluster://`` and ``rediss+cluster://`` name a cluster; every other scheme one server."""
    assert is_cluster(url) is cluster


def test_a_cluster_url_names_its_seeds_and_credentials() -> None:
    """Several seeds, a user and a URL-quoted password apply to every node; TLS carries over."""
    parsed = parse_cluster_url("rediss+cluster://app:p%40ss@10.0.0.1:7000,10.0.0.2:7001/")
    assert parsed.seeds == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert (parsed.username, parsed.password) == ("app", "p@ss")
    assert parsed.node_url("10.0.0.3", 7002) == "rediss://app:p%40ss@10.0.0.3:7002"


def test_a_cluster_url_without_credentials() -> None:
    parsed = parse_cluster_url("redis+cluster://127.0.0.1:7000")
    assert parsed.seeds == [("127.0.0.1", 7000)]
    assert parsed.node_url("127.0.0.1", 7001) == "redis://127.0.0.1:7001"


@pytest.mark.parametrize(("url", "problem"), [
    ("redis+cluster://127.0.0.1:7000/3", "database 0 only"),
    ("redis+cluster://127.0.0.1", "host:port"),
    ("redis+cluster://127.0.0.1:7000,:7001", "host:port"),
    ("redis://127.0.0.1:6379", "not a Redis Cluster URL"),
])
def test_a_bad_cluster_url_is_refused_with_the_reason(url: str, problem: str) -> None:
    """A cluster has only database 0, and each seed needs a host and a port: a URL that says otherwise is
    refused at start-up rather than half-honoured."""
    with pytest.raises(ValueError, match=problem):
        parse_cluster_url(url)


def test_settings_refuse_a_bad_cluster_url_at_start_up() -> None:
    """``Settings.from_env`` names REDIS_URL and the problem; a good cluster URL is kept as it is."""
    with pytest.raises(ValueError, match="REDIS_URL: a Redis Cluster has database 0 only"):
        Settings.from_env({"REDIS_URL": "redis+cluster://127.0.0.1:7000/2"})
    assert Settings.from_env({"REDIS_URL": "redis+cluster://127.0.0.1:7000"}).redis_url == \
        "redis+cluster://127.0.0.1:7000"
