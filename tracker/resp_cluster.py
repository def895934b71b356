"""The group committer's connection to a Redis Cluster: each command goes to the node that owns its key's slot.

A batch is split by node; each node's part is sent on that node's own ``RespConnection`` (one write, one
round trip) and the nodes are written to concurrently. The slot map comes from ``CLUSTER SLOTS`` and is
patched from each ``MOVED`` reply (and read again in full after a node failed); ``ASK`` (a slot being
migrated) sends that one command to the named node after ``ASKING``; ``TRYAGAIN`` (a script whose keys are
split between the two nodes of a migrating slot) is sent again every ``TRYAGAIN_PAUSE_S`` until the slot
has moved or the batch's time is up. A node that fails fails only its own commands: the others' replies
still come back.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tracker.redis_client import parse_cluster_url
from tracker.resp import RespConnection, command

SLOTS = 16384
REDIRECTS = 5  # rounds of MOVED/ASK followed for one batch (a resharding moves a slot once)
TRYAGAIN_PAUSE_S = 0.02
_ASKING = command("ASKING")
Address = tuple[str, int]


class ClusterRespConnection:
    """``RespConnection``'s ``execute`` for a cluster: ``keys[i]`` (any key of command i, or its hash tag)
    says where command i goes."""

    routed = True

    def __init__(self, url: str, timeout: float) -> None:
        self._cluster = parse_cluster_url(url)
        self._timeout = timeout
        self._owners: list[Address] | None = None  # slot -> primary
        self._nodes: dict[Address, RespConnection] = {}

    def _node(self, address: Address) -> RespConnection:
        node = self._nodes.get(address)
        if node is None:
            # its own timeout is the batch's: the outer bound below cuts a slow node short
            node = self._nodes[address] = RespConnection(self._cluster.node_url(*address), self._timeout)
        return node

    async def _refresh(self) -> list[Address]:
        """Read the slot map from the first node (known ones first, then the seeds) that answers."""
        last: Exception | None = None
        for address in [*self._nodes, *(s for s in self._cluster.seeds if s not in self._nodes)]:
            try:
                (reply,) = await self._node(address).execute([command("CLUSTER", "SLOTS")])
            except (RedisConnectionError, RedisTimeoutError) as exc:
                last = exc
                continue
            if isinstance(reply, Exception):
                last = reply
                continue
            owners: list[Address] = [address] * SLOTS
            for start, end, primary, *_ in reply:
                host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
                for slot in range(int(start), int(end) + 1):
                    owners[slot] = (host or address[0], int(primary[1]))
            self._owners = owners
            return owners
        raise RedisConnectionError(f"no Redis Cluster node answered CLUSTER SLOTS: {last}")

    async def execute(self, commands: list[bytes], keys: list[str] | None = None) -> list[Any]:
        """Send RESP-encoded commands, each to the owner of ``keys[i]``; one reply or error per command.

        A node that cannot be reached or answers too late gives its commands a ConnectionError /
        TimeoutError in their places.
        """
        assert keys is not None and len(keys) == len(commands), "a cluster needs each command's key"
        replies: list[Any] = [None] * len(commands)
        try:
            async with asyncio.timeout(self._timeout):
                owners = self._owners or await self._refresh()
                todo = {i: owners[key_slot(keys[i].encode())] for i in range(len(commands))}
                asking: set[int] = set()
                redirects = 0
                while todo:
                    todo, asking, redirected = await self._round(commands, todo, asking, replies)
                    redirects += redirected
                    if redirects > REDIRECTS:
                        for i in todo:
                            replies[i] = ResponseError("redis cluster kept redirecting the command")
                        break
                    if todo and not redirected:  # only TRYAGAIN left: the slot is still moving
                        await asyncio.sleep(TRYAGAIN_PAUSE_S)
                return replies
        except TimeoutError:
            self.close()
            fail: Exception = RedisTimeoutError("redis cluster did not answer in time")
        except (OSError, RedisConnectionError) as exc:
            fail = RedisConnectionError(f"redis cluster is unreachable: {exc}")
        return [fail if r is None else r for r in replies]

    async def _round(self, commands: list[bytes], todo: dict[int, Address], asking: set[int],
                     replies: list[Any]) -> tuple[dict[int, Address], set[int], bool]:
        """Send each pending command to its node; returns the ones to send again (with where they go now,
        and which go with ASKING) and whether any was redirected (MOVED/ASK) rather than told TRYAGAIN."""
        by_node: dict[Address, list[int]] = {}
        for i, address in todo.items():
            by_node.setdefault(address, []).append(i)
        nodes = list(by_node.items())
        results = await asyncio.gather(*(self._send(address, commands, ids, asking) for address, ids in nodes),
                                       return_exceptions=True)
        again: dict[int, Address] = {}
        ask_again: set[int] = set()
        redirected = False
        for (_, ids), result in zip(nodes, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                self._owners = None  # a failover may have moved its slots: read the map again next time
                for i in ids:
                    replies[i] = result
                continue
            for i, reply in zip(ids, result, strict=True):
                if isinstance(reply, ResponseError) and str(reply).startswith("TRYAGAIN"):
                    again[i] = todo[i]
                    if i in asking:
                        ask_again.add(i)
                    continue
                redirect = _redirect(reply)
                if redirect is None:
                    replies[i] = reply
                    continue
                kind, slot, address = redirect
                again[i] = address
                redirected = True
                if kind == "ASK":
                    ask_again.add(i)
                elif self._owners is not None:
                    self._owners[slot] = address
        return again, ask_again, redirected

    async def _send(self, address: Address, commands: list[bytes], ids: list[int], asking: set[int]) -> list[Any]:
        frame: list[bytes] = []
        for i in ids:
            if i in asking:
                frame.append(_ASKING)
            frame.append(commands[i])
        replies = await self._node(address).execute(frame)
        if not asking:
            return replies
        out, it = [], iter(replies)
        for i in ids:
            if i in asking:
                next(it)  # ASKING's OK
            out.append(next(it))
        return out

    def close(self) -> None:
        for node in self._nodes.values():
            node.close()


def _redirect(reply: Any) -> tuple[str, int, Address] | None:
    """``MOVED``/``ASK`` with the slot and the node to ask, or None for any other reply."""
    if not isinstance(reply, ResponseError):
        return None
    kind, _, rest = str(reply).partition(" ")
    if kind not in ("MOVED", "ASK"):
        return None
    slot, _, where = rest.partition(" ")
    host, _, port = where.rpartition(":")
    return kind, int(slot), (host, int(port))
