"""Rate limits: a token bucket in Redis per client address on the tracking routes and per API key on the API.

A bucket holds up to ``burst`` tokens and gains ``per_second`` of them continuously; each request takes one,
and a request that finds none is answered 429 with ``Retry-After`` (whole seconds until a token is there) and
a JSON body. One Lua script (``lua/bucket.lua``) refills and takes in one step on Redis's clock, so any number
of processes share a bucket exactly. The call goes through the beacon's group committer: it shares the
pipelined round trips of the beacons' appends rather than costing a connection checkout of its own.

The limiter fails open: when Redis cannot answer it (down, slow, the script lost), the request goes on as if
it had a token — the beacon then answers as it would have without a limiter (a 503 if storage itself is down);
a limiter never turns an outage into an error of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable
from typing import Any

import structlog

from tracker import keys, resp
from tracker.errors import DomainError
from tracker.eventlog import LuaScript, is_noscript
from tracker.groupcommit import GroupCommitter
from tracker.rates import Rate
from tracker.redis_client import AnyRedis

BUCKET = LuaScript("bucket")
TRACK, API = "t", "k"  # the two scopes: a client address on the tracking routes, an API key on the API
_FRAMES = 16_384  # bucket frames kept per scope (a visitor's address sends many beacons)
_ERROR_LOG_SECONDS = 10.0  # a failing limiter writes one line per this long, not one per request
log = structlog.get_logger("ratelimit")


class RateLimited(DomainError):
    """429: the caller's bucket is empty for ``retry_after`` more seconds."""

    status = 429
    code = "rate_limited"

    def __init__(self, retry_after: int, limit: str) -> None:
        super().__init__(f"too many requests: {limit}; retry after {retry_after} s", retry_after=retry_after)
        self.retry_after = retry_after


def retry_after(wait_ms: int) -> int:
    """Whole seconds a client waits for a token ``wait_ms`` away: rounded up, at least 1."""
    return max(1, math.ceil(wait_ms / 1000))


class Limiter:
    """The buckets of one service: ``track`` for tracking requests by client address, ``api`` per API key
    (either None: that limit is off)."""

    def __init__(self, committer: GroupCommitter, redis: AnyRedis, *, track: Rate | None, api: Rate | None,
                 on_error: Callable[[], None] | None = None) -> None:
        self._committer = committer
        self._redis = redis
        self.track = track
        self.api = api
        self._on_error = on_error
        # per scope and client: the bucket script's call, RESP-encoded, and its key (which picks a cluster's node)
        self._frames: dict[str, dict[str, tuple[bytes, str]]] = {TRACK: {}, API: {}}
        self._digests: dict[str, str] = {}
        self._script_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()  # takes retried after loading the script: kept referenced
        self._logged_at = -math.inf

    def take_callback(self, scope: str, who: str, done: Callable[[Any], None]) -> None:
        """Take a token from ``who``'s bucket in ``scope`` (whose rate must be set); ``done`` gets the raw
        reply, which ``wait_ms`` reads."""
        frame, key = self._frames[scope].get(who) or self._frame(scope, who)
        self._committer.submit_callback(frame, done, key)

    def take_again_callback(self, scope: str, who: str, done: Callable[[Any], None]) -> None:
        """``take_callback`` after a reply that ``is_noscript`` (Redis lost the script: a restart): load it, then
        take; ``done`` gets that reply, which ``wait_ms`` reads (a failure again lets the request through)."""

        async def again() -> None:
            done(await self._take(scope, who))

        task = asyncio.get_running_loop().create_task(again())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def take(self, scope: str, who: str) -> None:
        """Take a token, or raise RateLimited (the pixel and the API, which await their answers)."""
        reply = await self._take(scope, who)
        self.check(scope, reply)

    async def _take(self, scope: str, who: str) -> Any:
        """The bucket script's reply, the script loaded first if Redis lost it; an exception is returned."""
        frame, key = self._frames[scope].get(who) or self._frame(scope, who)
        for attempt in (1, 2):
            try:
                reply = await self._committer.submit(frame, key)
            except Exception as exc:
                if attempt == 2 or not is_noscript(exc):
                    return exc
                try:
                    await BUCKET.load(self._redis, self._script_lock)
                except Exception as load_failed:
                    return load_failed
            else:
                return reply
        raise AssertionError("unreachable")

    def check(self, scope: str, reply: Any) -> None:
        """Raise RateLimited if the bucket's ``reply`` says so."""
        wait = self.wait_ms(reply)
        if wait:
            rate = self.track if scope == TRACK else self.api
            raise RateLimited(retry_after(wait), str(rate))

    def wait_ms(self, reply: Any) -> int:
        """How long the caller must wait (0: go on). A reply that is an exception fails open (0): logged at
        most once per ``_ERROR_LOG_SECONDS`` and counted."""
        if isinstance(reply, int):
            return reply
        if self._on_error is not None:
            self._on_error()
        now = time.monotonic()
        if now - self._logged_at >= _ERROR_LOG_SECONDS:
            self._logged_at = now
            log.warning("rate limiter unavailable: requests pass unlimited", error=type(reply).__name__)
        return 0

    def api_key_name(self, key: str) -> str:
        """The name of an API key's bucket: a digest, so that no key is written to Redis."""
        name = self._digests.get(key)
        if name is None:
            if len(self._digests) >= _FRAMES:
                self._digests.clear()
            name = self._digests[key] = hashlib.sha256(key.encode()).hexdigest()[:24]
        return name

    def _frame(self, scope: str, who: str) -> tuple[bytes, str]:
        rate = self.track if scope == TRACK else self.api
        assert rate is not None
        frames = self._frames[scope]
        if len(frames) >= _FRAMES:
            frames.clear()
        key = keys.bucket(scope, who)
        entry = frames[who] = (resp.command(*BUCKET.args([key], [rate.burst, repr(rate.per_second / 1000)])), key)
        return entry

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
