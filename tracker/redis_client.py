"""Which Redis the service talks to: one server (``redis://``, ``rediss://``, ``unix://``) or a Redis Cluster
(``redis+cluster://host:port[,host:port...]``, ``rediss+cluster://`` with TLS), and the redis-py client for it.

A cluster URL names one or more seed nodes; the client learns the rest of the cluster (and every later change
of slot ownership) from them. User name and password, if any, apply to every node. A cluster has database 0
only, so a path (``/3``) is refused rather than ignored.
"""

from __future__ import annotations

from typing import NamedTuple, TypeAlias
from urllib.parse import quote, unquote, urlsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

AnyRedis: TypeAlias = Redis | RedisCluster
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


class ClusterUrl(NamedTuple):
    """A cluster URL taken apart: the seed nodes and what applies to every node."""

    seeds: list[tuple[str, int]]
    scheme: str  # redis or rediss (TLS)
    username: str | None
    password: str | None

    def node_url(self, host: str, port: int) -> str:
        """A plain URL of one node, with the cluster's credentials and TLS."""
        user = quote(self.username or "", safe="")
        auth = ""
        if self.password is not None:
            auth = f"{user}:{quote(self.password, safe='')}@"
        elif self.username is not None:
            auth = f"{user}@"
        return f"{self.scheme}://{auth}{host}:{port}"


def is_cluster(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster."""
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def parse_cluster_url(url: str) -> ClusterUrl:
    """The seeds and credentials of a ``redis+cluster://`` URL; ValueError names what is wrong with it."""
    scheme, _, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    if plain is None:
        raise ValueError(f"not a Redis Cluster URL (redis+cluster://host:port): {url!r}")
    netloc = urlsplit(f"//{rest}").netloc
    auth, _, hosts = netloc.rpartition("@")
    path = rest[len(netloc):].split("?", 1)[0]
    if path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has database 0 only: drop the /N from the cluster URL")
    seeds = []
    for part in hosts.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a cluster seed must be host:port, not {part!r}")
        seeds.append((host.strip("[]"), int(port)))
    username: str | None = None
    password: str | None = None
    if auth:
        user, colon, secret = auth.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    return ClusterUrl(seeds, plain, username, password)


def connect_redis(url: str, timeout: float = 1.0) -> AnyRedis:
    """A client that fails fast: no retries or backoff, so a Redis outage becomes a quick 503, not a hang.

    A cluster client still follows MOVED and ASK redirections (a resharding) and refreshes its slot map
    after a node failed; only the retry of a failed call is off.

    Maintenance notifications are off: with them on ("auto"), redis-py 8.1 skips its check for connections
    the server closed, so the first call after a Redis restart would fail (redis/redis-py#4128).
    """
    notifications = MaintNotificationsConfig(enabled=False)
    if is_cluster(url):
        parsed = parse_cluster_url(url)
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in parsed.seeds],
                            username=parsed.username, password=parsed.password, ssl=parsed.scheme == "rediss",
                            socket_timeout=timeout, socket_connect_timeout=timeout,
                            retry=AsyncRetry(NoBackoff(), 0), health_check_interval=0, max_connections=64,
                            maint_notifications_config=notifications)
    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                          retry=Retry(NoBackoff(), 0), health_check_interval=0,
                          max_connections=64, maint_notifications_config=notifications)
