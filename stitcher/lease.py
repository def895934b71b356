"""A lease in Redis: at most one process of those sharing a Redis holds it at a time (leader election).

The holder renews it every third of its TTL; a holder that stops renewing (killed, cut off from Redis) loses
it when the TTL runs out, and another process takes it. Locally a lease counts as held only until
``renewed + ttl * SAFE_SHARE``, measured from *before* the renewing command was sent, so a process never
believes it holds a lease that Redis has already let another take. Released on shutdown, so a successor takes
over at once rather than after the TTL.

What it guards must still be safe to run twice for a moment (a holder paused longer than its TTL): the
sweeper it elects is idempotent; the lease keeps N processes from all doing the same sweep at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time

import structlog

from tracker.redis_client import AnyRedis

log = structlog.get_logger("lease")
SAFE_SHARE = 0.8  # of the TTL during which a renewal counts locally: margin for clock rates and delays

# take the lease if free, renew it if ours; 1 when held afterwards
_TAKE_OR_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); return 1 end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    """One named lease, kept (taken whenever free, then renewed) from ``start`` until ``stop``."""

    def __init__(self, redis: AnyRedis, key: str, *, ttl_ms: int = 15_000) -> None:
        self.redis = redis
        self.key = key
        self.ttl_ms = ttl_ms
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._valid_until = 0.0
        self._take = redis.register_script(_TAKE_OR_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._task: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lease now (by its last renewal, within the safe share of the TTL)."""
        return time.monotonic() < self._valid_until

    async def try_take(self) -> bool:
        """Take the lease if it is free, or renew it if ours; whether it is held afterwards. Redis errors
        count as not held (the lease runs out by itself)."""
        sent, was = time.monotonic(), self.held
        try:
            ok = bool(await self._take(keys=[self.key], args=[self.owner, self.ttl_ms]))
        except Exception as exc:  # an outage: every process keeps trying; the holder says it lost the lease
            if was:
                log.warning("lease not renewed", lease=self.key, error=type(exc).__name__)
            ok = False
        self._valid_until = sent + self.ttl_ms / 1000 * SAFE_SHARE if ok else 0.0
        if ok != was:
            log.info("lease taken" if ok else "lease lost", lease=self.key, owner=self.owner)
        return ok

    def start(self) -> None:
        """Keep the lease in the background (a strong reference is kept here)."""
        self._task = asyncio.create_task(self._run(), name=f"lease-{self.key}")

    async def _run(self) -> None:
        while True:
            await self.try_take()
            await asyncio.sleep(self.ttl_ms / 3000)

    async def stop(self) -> None:
        """Stop renewing and release the lease if this process holds it."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._valid_until = 0.0
        with contextlib.suppress(Exception):  # unreachable Redis: the lease runs out by itself
            if await self._release(keys=[self.key], args=[self.owner]):
                log.info("lease released", lease=self.key, owner=self.owner)
