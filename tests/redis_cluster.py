"""A 3-master Redis Cluster of real redis-server processes on loopback ports, for the tests that must hold on
a cluster as on one Redis (``TEST_REDIS_CLUSTER=1``); and clients for either kind of URL.

Each node runs in its own directory with ``cluster-enabled yes``; the slots are split in three with
``CLUSTER ADDSLOTS``, the nodes meet, and the cluster is ready once every node reports
``cluster_state:ok`` and knows all three masters. No replicas: the tests need slots spread over nodes, not
failover. Stopping kills every process it started.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from redis.asyncio import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster

from tracker.embedded_redis import die_with_parent, find_redis_server
from tracker.redis_client import AnyRedis, is_cluster, parse_cluster_url

MASTERS = 3
BUS_OFFSET = 10_000  # Redis Cluster's bus listens on port + 10000
SLOTS = 16384
# a node that misses pings this long is marked failing: long, so that a loaded machine starving one node for a
# few seconds does not take the cluster down under a test (no test waits for a failure to be detected)
NODE_TIMEOUT_MS = 15_000


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(first: int = 17_000, last: int = 19_000) -> int:
    """A port p with p .. p+2 and their bus ports free (a race with another process is possible but harmless:
    the cluster then fails to start and says so)."""
    for base in range(first, last, MASTERS):
        if all(_bindable(p) and _bindable(p + BUS_OFFSET) for p in range(base, base + MASTERS)):
            return base
    raise RuntimeError("no free ports for a Redis Cluster")


class LocalCluster:
    """``MASTERS`` redis-server processes on ports ``base``.. forming one cluster; ``url`` names it."""

    def __init__(self, base_port: int, directory: Path, config: tuple[str, ...] = ()) -> None:
        self.ports = [base_port + i for i in range(MASTERS)]
        self.directory = directory
        self.config = config  # more redis-server arguments for every node
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        """A node's redis-server; its directory keeps ``nodes.conf``, so a restarted node rejoins as itself."""
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "",
             "--appendonly", "no", "--dir", str(node_dir), "--logfile", str(node_dir / "redis.log"), *self.config],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)

    def kill(self, i: int) -> None:
        """SIGKILL master ``i`` (its data is gone: no persistence)."""
        self.processes[i].kill()
        self.processes[i].wait()

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Start master ``i`` again and wait until every node sees the cluster whole."""
        self.processes[i] = self._spawn(self.ports[i])
        deadline = time.monotonic() + timeout
        clients = [redis.Redis(port=p, socket_timeout=5, socket_connect_timeout=0.5) for p in self.ports]
        try:
            for process, client in zip(self.processes, clients, strict=True):
                self._wait(lambda c=client: self._ready(c), process, deadline)
        finally:
            for client in clients:
                client.close()

    def start(self, timeout: float = 30.0) -> str:
        self.processes = [self._spawn(port) for port in self.ports]
        deadline = time.monotonic() + timeout
        clients = [redis.Redis(port=p, socket_timeout=5, socket_connect_timeout=0.5) for p in self.ports]
        try:
            for process, client in zip(self.processes, clients, strict=True):
                # the server answering must be ours, not another one already on the port
                self._wait(lambda c=client, p=process: int(c.info("server")["process_id"]) == p.pid, process,
                           deadline)
            share = SLOTS // MASTERS
            for i, client in enumerate(clients):
                end = SLOTS - 1 if i == MASTERS - 1 else (i + 1) * share - 1
                client.execute_command("CLUSTER ADDSLOTS", *range(i * share, end + 1))  # RANGE needs Redis 7
            for port in self.ports[1:]:
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", port)
            for process, client in zip(self.processes, clients, strict=True):
                self._wait(lambda c=client: self._ready(c), process, deadline)
        except BaseException:
            self.stop()
            raise
        finally:
            for client in clients:
                client.close()
        return self.url

    @staticmethod
    def _ready(client: redis.Redis) -> bool:
        info = client.cluster("INFO")
        return bool(info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == MASTERS
                    and int(info["cluster_slots_fail"]) == 0 and int(info["cluster_slots_pfail"]) == 0)

    def _wait(self, check: Any, process: subprocess.Popen[bytes], deadline: float) -> None:
        while True:
            try:
                if check():
                    return
            except redis.RedisError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster did not form; see the logs under {self.directory}")
            time.sleep(0.05)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            process.wait()
        self.processes.clear()


@contextmanager
def local_cluster(second: bool = False, config: tuple[str, ...] = ()) -> Iterator[LocalCluster]:
    """A running cluster for the block; ``TEST_REDIS_CLUSTER_PORT`` picks the first port (the next two and
    their bus ports, +10000, must be free too; a ``second`` cluster takes the three after), else free ones
    are found."""
    chosen = int(os.environ.get("TEST_REDIS_CLUSTER_PORT") or 0)
    base = chosen + (MASTERS if second else 0) if chosen else free_base_port()
    directory = Path(tempfile.mkdtemp(prefix="st-cluster-"))
    cluster = LocalCluster(base, directory, config)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


class _AsyncClusterClient(AsyncRedisCluster):
    """redis-py 8.1 sends a cluster's KEYS to one node only; the tests' KEYS looks at every master."""

    async def keys(self, pattern: Any = "*", **kwargs: Any) -> Any:
        await self.initialize()
        return await super().keys(pattern, target_nodes=self.get_primaries(), **kwargs)


def flush(url: str) -> None:
    """Empty the Redis at ``url`` (every master of a cluster)."""
    client = sync_client(url)
    try:
        if isinstance(client, RedisCluster):
            client.flushdb(target_nodes=client.get_primaries())
        else:
            client.flushdb()
    finally:
        client.close()


def sync_client(url: str) -> redis.Redis | RedisCluster:
    """A blocking client of one Redis or of a cluster."""
    if not is_cluster(url):
        return redis.Redis.from_url(url)
    parsed = parse_cluster_url(url)
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in parsed.seeds],
                        username=parsed.username, password=parsed.password)


def async_client(url: str) -> AnyRedis:
    """An asyncio client of one Redis or of a cluster."""
    if not is_cluster(url):
        return redis.asyncio.Redis.from_url(url)
    from redis.asyncio.cluster import ClusterNode as AsyncNode

    parsed = parse_cluster_url(url)
    return _AsyncClusterClient(startup_nodes=[AsyncNode(h, p) for h, p in parsed.seeds],
                             username=parsed.username, password=parsed.password)
