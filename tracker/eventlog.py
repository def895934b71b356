"""The Redis event log: anonymous visitor histories, links to contacts and the linked-event streams.

This is the one API through which anything reads or writes visitor events in Redis; the key layout is in
``tracker.keys`` and the atomic multi-key steps are the Lua scripts beside this module.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from redis.crc import key_slot
from redis.exceptions import NoScriptError, ResponseError

from tracker import keys, resp
from tracker.groupcommit import Connection, GroupCommitter
from tracker.redis_client import AnyRedis

_LUA = Path(__file__).with_name("lua")
LINK_TTL_SECONDS = 400 * 86_400  # as long as the visitor cookie lives
CLAIM_TTL_SECONDS = 7 * 86_400
_APPEND_ARGS = 11  # EVALSHA, sha, numkeys, 4 keys, ttl, cap, link ttl, visitor id: then 2 per event
_HEADS = 16_384  # visitors whose APPEND frame head is kept
CLUSTER_POLL_S = 0.2  # a cluster's linked streams are polled (see read_linked): the pause after an empty poll


class LuaScript:
    """A Lua script called by EVALSHA, loaded lazily and again after a Redis restart (NOSCRIPT)."""

    def __init__(self, name: str) -> None:
        self.source = (_LUA / f"{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        self.resp_head = f"$7\r\nEVALSHA\r\n$40\r\n{self.sha}\r\n"  # the first two bulks of a call

    def args(self, keys_: list[str], argv: list[Any]) -> tuple[Any, ...]:
        return ("EVALSHA", self.sha, len(keys_), *keys_, *argv)

    async def load(self, redis: AnyRedis, lock: asyncio.Lock) -> None:
        """Load the script once, however many callers met NOSCRIPT at the same time (a Redis restart)."""
        async with lock:
            if not (await redis.script_exists(self.sha))[0]:
                await redis.script_load(self.source)


APPEND = LuaScript("append")
CLAIM = LuaScript("claim")


class AppendResult(NamedTuple):
    stored: int
    duplicates: int
    over_cap: list[str]  # ids of events not stored because the visitor's history is at its cap


@dataclass(frozen=True)
class LinkedEvent:
    """One event of a linked visitor read from a partition stream, to be put on the contact's timeline."""

    stream: str
    entry_id: str
    contact_id: int
    vid: str
    event: dict[str, Any]


class EventLog:
    """Visitor histories in Redis; writes from beacons go through a group committer."""

    def __init__(self, redis: AnyRedis, *, partitions: int, anon_ttl_seconds: int, history_cap: int,
                 rejected_cap: int = 100_000, committer: GroupCommitter | None = None,
                 linked_reader: Connection | None = None) -> None:
        self.redis = redis
        self.partitions = partitions
        self.anon_ttl = anon_ttl_seconds
        self.history_cap = history_cap
        self.rejected_cap = rejected_cap
        self.committer = committer
        # a cluster's partition streams are read through this (``_read_linked_cluster``); None: one Redis
        self.linked_reader = linked_reader
        self._poll_frames: dict[tuple[str, int, str], list[bytes]] = {}
        self._script_lock = asyncio.Lock()
        self._heads: dict[str, tuple[bytes, str]] = {}  # see _append_head
        self._heads_settings = (0, 0)
        self._stream_groups: list[list[str]] | None = None  # see _slot_groups

    def keys(self, vid: str) -> keys.VisitorKeys:
        return keys.VisitorKeys(vid, self.partitions)

    async def _eval(self, script: LuaScript, keys_: list[str], argv: list[Any], encoded: bytes | None = None,
                    route: str = "") -> Any:
        """EVALSHA, through the group committer if there is one (``encoded``: the same call, RESP-encoded;
        ``route``: a key of it, for a cluster, when ``keys_`` is not given)."""
        for attempt in (1, 2):
            try:
                if self.committer is not None:
                    return await self.committer.submit(encoded or resp.command(*script.args(keys_, argv)),
                                                       keys_[0] if keys_ else route)
                return await self.redis.execute_command(*script.args(keys_, argv))
            except NoScriptError:
                if attempt == 2:
                    raise
                await script.load(self.redis, self._script_lock)
            except ResponseError as exc:  # pipelines surface NOSCRIPT as a plain ResponseError
                if attempt == 2 or not str(exc).startswith("NOSCRIPT"):
                    raise
                await script.load(self.redis, self._script_lock)
        raise AssertionError("unreachable")

    async def append(self, vid: str, events: list[tuple[str, bytes]]) -> AppendResult:
        """Store events under the visitor (or hand them to its contact's stream if linked).

        Returns once Redis has them. Ids already stored are skipped; events past the history cap are
        returned by id so the caller can record them as rejected.
        """
        tokens, frame, route = self._append_frame(vid, events)
        keys_: list[str] = []
        argv: list[Any] = []
        if self.committer is None:  # redis-py sends it: the arguments, not the frame
            k = self.keys(vid)
            keys_ = [k.events, k.ids, k.link, k.linked_stream]
            argv = [self.anon_ttl, self.history_cap, LINK_TTL_SECONDS, vid]
            for token, (_, body) in zip(tokens, events, strict=True):
                argv += [token, body]
        return append_result(await self._eval(APPEND, keys_, argv, frame, route), events)

    def append_callback(self, vid: str, events: list[tuple[str, bytes]], done: Callable[[Any], None]) -> None:
        """``append`` through the group committer with a callback instead of a future (the edge's beacon path):
        ``done`` gets the script's raw reply (``append_result`` reads it) or an exception — a ``ResponseError``
        starting with NOSCRIPT when Redis lost the script (a restart), on which the caller retries with
        ``append``, which loads it."""
        assert self.committer is not None
        _, frame, route = self._append_frame(vid, events)
        self.committer.submit_callback(frame, done, route)

    def _append_frame(self, vid: str, events: list[tuple[str, bytes]]) -> tuple[list[str], bytes, str]:
        """The events' dedupe tokens, the RESP frame of APPEND's EVALSHA (the visitor's part encoded once per
        visitor, then the events — the hottest few lines of the beacon) and a key of the visitor's slot."""
        tokens = [dedupe_token(event_id) for event_id, _ in events]
        head, route = self._append_head(vid)
        frame = [b"*%d\r\n" % (_APPEND_ARGS + 2 * len(events)), head]
        for token, (_, body) in zip(tokens, events, strict=True):
            frame.append(b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(token), token.encode(), len(body), body))
        return tokens, b"".join(frame), route

    def _append_head(self, vid: str) -> tuple[bytes, str]:
        """APPEND's frame after its argument count and before the events: script, keys, settings, visitor id;
        and the visitor's stream, whose slot is the visitor's.

        Kept per visitor (a visitor sends many beacons), at most ``_HEADS`` of them; built again when the
        settings it holds change."""
        settings = (self.anon_ttl, self.history_cap)
        if self._heads_settings != settings:
            self._heads.clear()
            self._heads_settings = settings
        head = self._heads.get(vid)
        if head is None:
            if len(self._heads) >= _HEADS:
                self._heads.clear()
            k = self.keys(vid)
            keys_ = (k.events, k.ids, k.link, k.linked_stream)
            head = self._heads[vid] = (
                f"{APPEND.resp_head}{resp.ascii_bulks(str(len(keys_)), *keys_)}".encode()
                + resp.command(self.anon_ttl, self.history_cap, LINK_TTL_SECONDS, vid).partition(b"\n")[2],
                k.linked_stream)
        return head

    async def history(self, vid: str) -> tuple[int | None, list[dict[str, Any]]]:
        """The contact the visitor is linked to, if any, and its anonymous history (plus any part held by
        that contact's unfinished stitch), oldest first."""
        k = self.keys(vid)
        contact = await self.link_of(vid)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(k.events, 0, -1)
            if contact is not None:
                pipe.lrange(k.claim(contact), 0, -1)
            lists = await pipe.execute()
        events = [orjson.loads(x) for part in lists for x in part]
        events.sort(key=lambda e: (e.get("t", 0), e.get("rt", 0)))
        return contact, events

    async def link_of(self, vid: str) -> int | None:
        """The contact a visitor is linked to, if any."""
        value = await self.redis.get(self.keys(vid).link)
        return int(value) if value is not None else None

    # --- the stitch ---------------------------------------------------------------------------------

    async def claim(self, vid: str, contact_id: int) -> int:
        """Link ``vid`` to ``contact_id`` and move its anonymous history into its claim, atomically.

        Safe to repeat: a second call re-sets the same link and finds nothing more to move.
        Returns the number of events waiting in the claim.
        """
        k = self.keys(vid)
        return int(await self._eval(CLAIM, [k.link, k.events, k.claim(contact_id)],
                                    [contact_id, LINK_TTL_SECONDS, CLAIM_TTL_SECONDS]))

    async def read_claim(self, vid: str, contact_id: int) -> list[bytes]:
        """The stored events (JSON) handed to a stitch of ``vid`` onto ``contact_id`` and not yet released."""
        return [x if isinstance(x, bytes) else x.encode()
                for x in await self.redis.lrange(self.keys(vid).claim(contact_id), 0, -1)]

    async def keep_claim(self, vid: str, contact_id: int) -> None:
        """Renew the TTL of a claim a stitch is about to read (a no-op when there is none)."""
        await self.redis.expire(self.keys(vid).claim(contact_id), CLAIM_TTL_SECONDS)

    async def release_claim(self, vid: str, contact_id: int) -> None:
        """Drop the claim once its events are safely on the timeline."""
        await self.redis.delete(self.keys(vid).claim(contact_id))

    async def missing_links(self, vids: list[str]) -> list[str]:
        """The visitors among ``vids`` that Redis holds no link for (one pipelined round trip)."""
        if not vids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for vid in vids:
                pipe.exists(self.keys(vid).link)
            found = await pipe.execute()
        return [vid for vid, there in zip(vids, found, strict=True) if not there]

    async def server_run_id(self) -> str:
        """The run id of the Redis server: another one after every restart of it."""
        info = await self.redis.info("server")
        return str(info["run_id"])

    async def links_seeded_for(self) -> str | None:
        """The run id of the server whose links were last re-seeded from SQL, if any (``LINKS_SEEDED``)."""
        value = await self.redis.get(keys.LINKS_SEEDED)
        return _s(value) if value is not None else None

    async def mark_links_seeded(self, run_id: str) -> None:
        await self.redis.set(keys.LINKS_SEEDED, run_id)

    async def unlink(self, vid: str) -> None:
        """Forget the visitor's link so later events are anonymous again (history untouched)."""
        await self.redis.delete(self.keys(vid).link)

    async def forget(self, vid: str, contact_ids: list[int]) -> None:
        """Erase everything Redis holds about a visitor whose current owner is erased."""
        k = self.keys(vid)
        await self.redis.delete(k.events, k.ids, k.link, *(k.claim(c) for c in contact_ids))

    async def drop_claims(self, vid: str, contact_ids: list[int]) -> None:
        """Drop what erased contacts had claimed from a visitor that now belongs to someone else."""
        if contact_ids:
            k = self.keys(vid)
            await self.redis.delete(*(k.claim(c) for c in contact_ids))

    # --- rejected events ----------------------------------------------------------------------------

    async def record_rejected(self, vid: str | None, rejected: list[dict[str, Any]]) -> None:
        """Keep each rejected event with its reason in a capped stream an operator can list."""
        if not rejected:
            return
        now = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for record in rejected:
                fields: dict[Any, Any] = {"at": now, "vid": vid or "", "reason": record["reason"],
                          "event_id": record.get("id", ""), "event": record.get("event", "")}
                pipe.xadd(keys.REJECTED, fields, maxlen=self.rejected_cap, approximate=True)
            await pipe.execute()

    async def forget_rejected(self, vids: set[str], chunk: int = 1000) -> int:
        """Delete the rejected events of these visitors (an erase); returns how many went.

        The stream is capped (``rejected_cap``), so one pass over it is bounded.
        """
        if not vids:
            return 0
        wanted = {v.encode() for v in vids}
        deleted, start = 0, "-"
        while True:
            entries = await self.redis.xrange(keys.REJECTED, min=start, count=chunk) or []
            doomed = [_s(entry_id) for entry_id, fields in entries if (fields or {}).get(b"vid") in wanted]
            if doomed:
                deleted += int(await self.redis.xdel(keys.REJECTED, *doomed))
            if len(entries) < chunk:
                return deleted
            start = "(" + _s(entries[-1][0])

    async def rejected(self, count: int = 100) -> list[dict[str, Any]]:
        """The most recent rejected events, newest first."""
        entries = await self.redis.xrevrange(keys.REJECTED, count=count)
        out: list[dict[str, Any]] = []
        for entry_id, fields in entries or []:
            record: dict[str, Any] = {_s(k): _s(v) for k, v in (fields or {}).items()}
            record["entry"] = _s(entry_id)
            record["at"] = int(record["at"])
            out.append(record)
        return out

    # --- the linked streams (read by the stitcher's worker) -----------------------------------------

    def linked_streams(self) -> list[str]:
        return [keys.linked_stream(p) for p in range(self.partitions)]

    async def ensure_group(self) -> None:
        """Create the consumer group on every partition stream (idempotent)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in self.linked_streams():
                pipe.xgroup_create(stream, keys.LINKED_GROUP, id="0", mkstream=True)
            replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise reply

    async def read_linked(self, consumer: str, count: int = 500, block_ms: int | None = 1000,
                          pending: bool = False) -> list[LinkedEvent]:
        """New entries of the linked streams for this consumer (blocks up to ``block_ms``).

        ``pending=True`` re-reads what this consumer was given but has not acknowledged (after an error).
        On one Redis this is one XREADGROUP over every partition; on a cluster see ``_read_linked_cluster``.
        """
        if self.linked_reader is not None:
            return await self._read_linked_cluster(self.linked_reader, consumer, count, block_ms, pending)
        streams = dict.fromkeys(self.linked_streams(), "0" if pending else ">")
        reply = await self.redis.xreadgroup(keys.LINKED_GROUP, consumer, streams,  # type: ignore[arg-type]
                                            count=count, block=block_ms)
        return _linked(reply)

    async def _read_linked_cluster(self, reader: Connection, consumer: str, count: int, block_ms: int | None,
                                   pending: bool) -> list[LinkedEvent]:
        """``read_linked`` on a cluster: one round trip per node, to every node at once.

        Redis Cluster refuses a command whose keys lie in different hash slots (CROSSSLOT), even when one
        node owns all of them, and each partition is a slot of its own (its visitors' keys and its stream
        must share one for APPEND), so a node cannot be read with one XREADGROUP over its partitions. Each
        node gets one pipelined write instead, one XREADGROUP per slot of its partitions, without BLOCK (a
        blocking read would hold up the node's others); a poll that finds nothing is repeated every
        ``CLUSTER_POLL_S`` until ``block_ms`` has passed. The commands are encoded once and sent as RESP
        on the reader's connections (redis-py's pipeline cost ~20 ms of CPU a poll for 1024 partitions).
        """
        since = "0" if pending else ">"
        frames = self._poll_frames.get((consumer, count, since))
        if frames is None:
            frames = self._poll_frames[(consumer, count, since)] = [
                resp.command("XREADGROUP", "GROUP", keys.LINKED_GROUP, consumer, "COUNT", count, "STREAMS",
                             *streams, *([since] * len(streams)))
                for streams in self._slot_groups()]
        routes = [streams[0] for streams in self._slot_groups()]
        deadline = time.monotonic() + (block_ms or 0) / 1000
        while True:
            replies = await reader.execute(frames, routes)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            found = _linked([[stream, [(entry_id, _pairs(fields)) for entry_id, fields in entries]]
                             for reply in replies for stream, entries in (reply or [])])
            left = deadline - time.monotonic()
            if found or block_ms is None or left <= 0:
                return found
            await asyncio.sleep(min(CLUSTER_POLL_S, left))

    def _slot_groups(self) -> list[list[str]]:
        """The partition streams grouped by hash slot (partitions whose tags share a slot share a read)."""
        if self._stream_groups is None:
            groups: dict[int, list[str]] = {}
            for stream in self.linked_streams():
                groups.setdefault(key_slot(stream.encode()), []).append(stream)
            self._stream_groups = list(groups.values())
        return self._stream_groups

    async def reclaim_linked(self, consumer: str, min_idle_ms: int = 30_000) -> list[LinkedEvent]:
        """Take over entries another (dead) consumer read but never acknowledged."""
        out: list[LinkedEvent] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in self.linked_streams():
                pipe.xautoclaim(stream, keys.LINKED_GROUP, consumer, min_idle_ms, "0-0", count=500)
            replies = await pipe.execute(raise_on_error=False)
        for stream, reply in zip(self.linked_streams(), replies, strict=True):
            if isinstance(reply, Exception) or not reply:
                continue
            out.extend(_linked([[stream, reply[1]]]))
        return out

    async def ack_linked(self, events: list[LinkedEvent]) -> None:
        """Acknowledge and delete entries now on the timeline."""
        by_stream: dict[str, list[str]] = {}
        for e in events:
            by_stream.setdefault(e.stream, []).append(e.entry_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, ids in by_stream.items():
                pipe.xack(stream, keys.LINKED_GROUP, *ids)
                pipe.xdel(stream, *ids)
            await pipe.execute()

    async def aclose(self) -> None:
        """Close the clients this log was made with (for a log that owns them, as the worker's does)."""
        await self.redis.aclose()
        if self.linked_reader is not None:
            self.linked_reader.close()

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.redis.ping(), 1.0))
        except Exception:
            return False


def append_result(reply: Any, events: list[tuple[str, bytes]]) -> AppendResult:
    """What APPEND's reply says of ``events``."""
    over_cap = []
    if len(reply) > 2:  # rare: map the tokens back to the ids
        by_token = {dedupe_token(event_id): event_id for event_id, _ in events}
        over_cap = [by_token[_s(x)] for x in reply[2:]]
    return AppendResult(reply[0], reply[1], over_cap)


def is_noscript(exc: BaseException) -> bool:
    """Whether Redis answered NOSCRIPT (it lost the script: a restart); ``append`` loads it and retries."""
    return isinstance(exc, NoScriptError) or (isinstance(exc, ResponseError) and str(exc).startswith("NOSCRIPT"))


_BLAKE2B_8 = hashlib.blake2b(digest_size=8)


def dedupe_token(event_id: str) -> str:
    """The member that stands for an event id in a visitor's id set: a 63-bit hash, in decimal.

    Redis keeps a set of small integers as a packed array (8 bytes a member up to 512 members) instead of
    a hash table (~80 bytes a member), which makes the idempotency set a small part of a visitor's memory.
    Two different ids of one visitor share a token with a probability of about n²/2⁶⁴ — for 10,000 events
    one in 10¹¹ — and even then only the Redis copy is affected: the timeline is unique on the real id.
    """
    h = _BLAKE2B_8.copy()  # cheaper than a new hash object with its parameters
    h.update(event_id.encode())
    return str(int.from_bytes(h.digest(), "big") >> 1)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(fields: list[Any] | None) -> dict[Any, Any] | None:
    """A stream entry's flat field list (a raw RESP reply) as a dict; None for an entry deleted while pending."""
    return None if fields is None else dict(zip(fields[::2], fields[1::2], strict=True))


def _linked(reply: Any) -> list[LinkedEvent]:
    out = []
    for stream, entries in reply or []:
        for entry_id, fields in entries:
            if not fields:  # deleted while pending
                continue
            f = {_s(k): v for k, v in fields.items()}
            out.append(LinkedEvent(_s(stream), _s(entry_id), int(f["c"]), _s(f["v"]), orjson.loads(f["e"])))
    return out
