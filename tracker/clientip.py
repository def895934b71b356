"""Who a request comes from, for the rate limiter: the peer, or what trusted proxies say in X-Forwarded-For.

``X-Forwarded-For`` is believed only from a peer inside ``TRUSTED_PROXIES``: each proxy appends the address it
was connected from, so the hops are read from the right, and the first one that is not itself a trusted proxy
is the client (anything left of it was written by that client and could say anything). An IPv6 client counts
by its /64, the block one host or one subscriber is usually given, so that walking through it earns no fresh
buckets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import structlog

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_CACHE = 16_384  # peers whose bucket name is remembered
log = structlog.get_logger("ratelimit")


def peer_host(peername: object) -> str | None:
    """The address in a transport's ``peername`` (a TCP (host, port, ...) tuple); None for a unix socket."""
    if isinstance(peername, tuple) and peername and isinstance(peername[0], str):
        return peername[0]
    return None


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """``TRUSTED_PROXIES``: addresses or CIDR blocks; ValueError naming the one that is neither."""
    out = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"TRUSTED_PROXIES: {cidr!r} is not an IP address or CIDR block") from exc
    return tuple(out)


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("["):  # [v6]:port, as some proxies write it
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _name(address: Address) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False).network_address) + "/64"
    return str(address)


class ClientAddress:
    """``client(peer, forwarded)``: the name of the client's bucket."""

    def __init__(self, trusted: tuple[Network, ...]) -> None:
        self._trusted = trusted
        self._names: dict[str, str] = {}  # peer → its name, when X-Forwarded-For does not apply
        self.trusts_proxies = bool(trusted)
        self._warned = False

    def is_trusted(self, address: Address) -> bool:
        return any(address in network for network in self._trusted)

    def __call__(self, peer: str | None, forwarded: str | None) -> str:
        """The client of a request from ``peer`` (an IP address; None or "" for a unix socket) carrying the
        X-Forwarded-For value ``forwarded`` (several headers joined by commas, in order)."""
        if forwarded:
            address = _address(peer) if peer else None
            if address is not None and self.is_trusted(address):
                return self._forwarded(address, forwarded)
            if not self._warned:  # once: a proxy in front that is not configured puts every visitor in its bucket
                self._warned = True  # and no address in the line: it may be a visitor's
                log.warning("X-Forwarded-For from a peer not in TRUSTED_PROXIES is ignored: if a proxy is in "
                            "front, list it there, or every visitor shares its rate limit")
        name = self._names.get(peer or "")
        if name is None:
            if len(self._names) >= _CACHE:
                self._names.clear()
            address = _address(peer) if peer else None
            name = self._names[peer or ""] = _name(address) if address is not None else "unix"
        return name

    def _forwarded(self, peer: Address, forwarded: str) -> str:
        """The rightmost hop that is not a trusted proxy; a hop that is no address ends the walk at the last
        trusted one (the proxy that passed it on is the last party known)."""
        last = peer
        for hop in reversed(forwarded.split(",")):
            address = _address(hop)
            if address is None:
                break
            if not self.is_trusted(address):
                return _name(address)
            last = address
        return _name(last)
