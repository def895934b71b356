"""The Redis lease that elects the sweeper among processes sharing a Redis (``stitcher/lease.py``)."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from stitcher.lease import Lease
from tests.helpers import eventually

KEY = "st:lease:test"


async def test_one_holder_at_a_time_and_a_release_hands_over_at_once(redis_client: Redis) -> None:
    """Of two processes' leases on one name only the first taker holds it; renewing keeps it; once released
    the other takes it on its next try (not after the TTL)."""
    first, second = Lease(redis_client, KEY, ttl_ms=60_000), Lease(redis_client, KEY, ttl_ms=60_000)
    assert await first.try_take() and first.held
    assert not await second.try_take() and not second.held
    assert await first.try_take()  # a renewal
    assert await redis_client.pttl(KEY) > 50_000
    await first.stop()
    assert not first.held and await redis_client.get(KEY) is None
    assert await second.try_take() and second.held
    assert not await first.try_take()


async def test_a_holder_whose_lease_ran_out_and_was_taken_stops_holding(redis_client: Redis) -> None:
    """A holder cut off past its TTL (here: the key expired and another took it) learns at its next renewal
    that it no longer holds the lease, and its release leaves the new holder's lease alone."""
    stale, fresh = Lease(redis_client, KEY, ttl_ms=60_000), Lease(redis_client, KEY, ttl_ms=60_000)
    assert await stale.try_take()
    await redis_client.delete(KEY)  # as if its TTL had run out
    assert await fresh.try_take()
    assert not await stale.try_take() and not stale.held
    await stale.stop()
    assert (await redis_client.get(KEY)).decode() == fresh.owner
    await fresh.stop()


async def test_a_lease_not_renewed_stops_counting_as_held_before_redis_lets_it_go(redis_client: Redis) -> None:
    """Without renewals the holder stops believing it holds the lease before Redis would let another take
    it: never two holders at once."""
    lease = Lease(redis_client, KEY, ttl_ms=2_000)
    assert await lease.try_take()
    gone = await eventually(lambda: _held(lease), lambda held: not held, 10)
    assert not gone
    assert await redis_client.pttl(KEY) > 0  # Redis still keeps it for the holder


async def test_the_background_task_keeps_the_lease_and_redis_errors_count_as_not_held(clean_redis: str) -> None:
    """``start`` keeps renewing past the TTL; against an unreachable Redis a lease is never held."""
    client = Redis.from_url(clean_redis)
    lease = Lease(client, KEY, ttl_ms=3_000)
    lease.start()
    try:
        assert await eventually(lambda: _held(lease), bool, 10)
        await asyncio.sleep(4.5)  # longer than the TTL: only renewals keep it
        assert lease.held and (await client.get(KEY)).decode() == lease.owner
    finally:
        await lease.stop()
        await client.aclose()
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    try:
        assert not await Lease(dead, KEY).try_take()
    finally:
        await dead.aclose()


async def _held(lease: Lease) -> bool:
    return lease.held
