"""The rate limit's pure parts: the ``N/PERIOD[:BURST]`` setting, the client address behind proxies, Retry-After."""

from __future__ import annotations

import pytest

from tracker.clientip import ClientAddress, parse_networks, peer_host
from tracker.ratelimit import retry_after
from tracker.rates import Rate, parse_rate
from tracker.settings import DEFAULT_RATE_API, DEFAULT_RATE_TRACK, Settings


@pytest.mark.parametrize(("text", "rate"), [
    ("100/10s", Rate(100, 10.0)),
    ("100/10s:300", Rate(300, 10.0)),
    ("20/s", Rate(20, 20.0)),
    ("20/1", Rate(20, 20.0)),
    ("5/500ms", Rate(5, 10.0)),
    ("60/m", Rate(60, 1.0)),
    (" 3600 / 1h : 10 ", Rate(10, 1.0)),
    ("2/0.5s", Rate(2, 4.0)),
])
def test_a_rate_reads_as_requests_per_period_with_an_optional_burst(text: str, rate: Rate) -> None:
    """N/PERIOD is a bucket of N refilled at N per PERIOD; :BURST sets the bucket's size apart."""
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "0", "off", "OFF", "none", "0/10s", None])
def test_an_empty_or_zero_rate_is_no_limit(text: str | None) -> None:
    """0, off or an empty value turns the limit off."""
    assert parse_rate(text) is None


@pytest.mark.parametrize("text", ["x", "100", "100/10x", "-1/s", "10/0s", "10/s:0", "10/s:", "1e3/s"])
def test_a_rate_that_means_nothing_is_refused_by_name(text: str) -> None:
    """A value that is no rate (or allows no request at all) stops the start with the variable's name."""
    with pytest.raises(ValueError, match="RATE_LIMIT_TRACK"):
        parse_rate(text, "RATE_LIMIT_TRACK")


def test_settings_read_limits_and_proxies_from_the_environment() -> None:
    """The defaults are on; set empty or 0 a limit is off; TRUSTED_PROXIES takes addresses and CIDR blocks."""
    assert Settings.from_env({}).rate_limit_track == DEFAULT_RATE_TRACK
    assert Settings.from_env({}).rate_limit_api == DEFAULT_RATE_API
    s = Settings.from_env({"RATE_LIMIT_TRACK": "", "RATE_LIMIT_API": "50/1s:500",
                           "TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1, fd00::/8"})
    assert s.rate_limit_track is None and s.rate_limit_api == Rate(500, 50.0)
    assert [str(n) for n in s.trusted_proxies] == ["10.0.0.0/8", "192.0.2.1/32", "fd00::/8"]
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        Settings.from_env({"TRUSTED_PROXIES": "10.0.0.0/8,proxy.local"})


def test_the_defaults_leave_a_real_visitor_alone() -> None:
    """A visitor's script sends about a beacon a second; a whole office behind one address, far more, still
    stays under the tracking default; a backend's hooks stay under the API default."""
    assert DEFAULT_RATE_TRACK.per_second >= 50 and DEFAULT_RATE_TRACK.burst >= 1000
    assert DEFAULT_RATE_API.per_second >= 50 and DEFAULT_RATE_API.burst >= 1000


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    """Retry-After never tells a client to come back before a token is there, and never says 0."""
    assert [retry_after(ms) for ms in (1, 999, 1000, 1001, 20_000)] == [1, 1, 1, 2, 20]


def client(proxies: str = "") -> ClientAddress:
    return ClientAddress(parse_networks(p for p in proxies.split(",") if p))


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    """X-Forwarded-For is ignored when no proxy is trusted."""
    assert client()("192.0.2.10", "198.51.100.1") == "192.0.2.10"
    assert client()(None, "198.51.100.1") == "unix"


def test_x_forwarded_for_is_read_only_from_a_trusted_peer() -> None:
    """From a peer outside TRUSTED_PROXIES the header is the client's own words: ignored."""
    c = client("10.0.0.0/8")
    assert c("192.0.2.10", "198.51.100.1") == "192.0.2.10"
    assert c("10.0.0.2", "198.51.100.1") == "198.51.100.1"
    assert c("10.0.0.2", None) == "10.0.0.2"


def test_the_client_is_the_rightmost_hop_no_proxy_of_ours_wrote() -> None:
    """Hops are read from the right past trusted proxies; what the client wrote further left is not believed."""
    c = client("10.0.0.0/8,192.0.2.1")
    assert c("10.0.0.2", "203.0.113.9, 198.51.100.1, 10.1.1.1") == "198.51.100.1"
    assert c("192.0.2.1", "198.51.100.1,10.1.1.1") == "198.51.100.1"
    # every hop a proxy of ours: the leftmost is the nearest thing to a client there is
    assert c("10.0.0.2", "10.3.3.3, 10.1.1.1") == "10.3.3.3"
    # a hop that is no address ends the walk at the proxy that passed it on
    assert c("10.0.0.2", "198.51.100.1, unknown, 10.1.1.1") == "10.1.1.1"
    assert c("10.0.0.2", "") == "10.0.0.2"


def test_addresses_are_read_as_proxies_write_them() -> None:
    """Ports, brackets and IPv4-mapped IPv6 name the address they carry."""
    c = client("127.0.0.1")
    assert c("127.0.0.1", "198.51.100.1:4711") == "198.51.100.1"
    assert c("127.0.0.1", "[2001:db8::1]:4711") == "2001:db8::/64"
    assert c("::ffff:192.0.2.10", None) == "192.0.2.10"
    assert c("::ffff:127.0.0.1", "198.51.100.1") == "198.51.100.1"


def test_an_ipv6_client_counts_by_its_64() -> None:
    """Addresses of one /64 (one host or subscriber, usually) share a bucket; the next /64 has its own."""
    c = client()
    assert c("2001:db8:1:2::1", None) == c("2001:db8:1:2:ffff:ffff:ffff:ffff", None) == "2001:db8:1:2::/64"
    assert c("2001:db8:1:3::1", None) == "2001:db8:1:3::/64"


def test_peer_host_reads_a_transports_peername() -> None:
    """TCP peers (v4 and v6 tuples) give their address; a unix socket's empty name gives None."""
    assert peer_host(("192.0.2.1", 5000)) == "192.0.2.1"
    assert peer_host(("::1", 5000, 0, 0)) == "::1"
    assert peer_host("") is None and peer_host(None) is None


def test_an_untrusted_x_forwarded_for_is_warned_about_once_without_an_address() -> None:
    """A proxy in front that is not in TRUSTED_PROXIES shows as X-Forwarded-For from an untrusted peer: one
    warning per process, naming no address (it may be a visitor's)."""
    from structlog.testing import capture_logs

    c = client("10.0.0.0/8")
    with capture_logs() as logs:
        for _ in range(3):
            c("192.0.2.10", "198.51.100.1")
        c("10.0.0.1", "198.51.100.1")
    assert [entry["log_level"] for entry in logs] == ["warning"]
    assert "192.0.2.10" not in str(logs) and "198.51.100.1" not in str(logs)
