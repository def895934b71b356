"""The worker after Redis lost its consumer group (a Redis, or the cluster node holding a partition, restarted
without its data): it makes the groups again and drains on. Runs on one Redis and on a cluster alike."""

from __future__ import annotations

import uuid
from typing import Any

from redis.asyncio import Redis

from tests.conftest import auth
from tests.helpers import eventually, recent_page_views
from tracker.keys import LINKED_GROUP, VisitorKeys
from tracker.settings import Settings


async def timeline_ids(client: Any, contact_id: int) -> set[str]:
    r = await client.get(f"/api/v1/contact/{contact_id}/events", headers=auth(), params={"limit": "100"})
    body = await r.json()
    assert r.status == 200, body
    return {e["id"] for e in body["events"]}


async def send(client: Any, vid: str, events: list[dict[str, Any]]) -> None:
    client.session.cookie_jar.clear()
    r = await client.post("/t", json={"vid": vid, "sent_at": events[0]["ts"], "events": events})
    assert r.status == 204, await r.text()


async def test_the_worker_makes_a_lost_consumer_group_again(aiohttp_client: Any, settings: Settings,
                                                           redis_client: Redis) -> None:
    """A linked visitor's partition stream loses its consumer group while the service runs; the visitor's next
    beacons still reach the contact's timeline."""
    from stitcher.app import init_app

    client = await aiohttp_client(init_app(settings))
    vid = str(uuid.uuid4())
    first, later = recent_page_views(2, "first"), recent_page_views(2, "later")
    await send(client, vid, first)
    r = await client.post("/api/v1/contact/subscribe", headers=auth(), json={
        "contact": {"externalCustomerId": "C-groups", "visitorIds": [vid]}, "groups": ["newsletter"]})
    body = await r.json()
    assert r.status == 200, body
    stream = VisitorKeys(vid, settings.partitions).linked_stream
    assert await eventually(lambda: redis_client.exists(stream), bool, 10), "the worker never made its groups"
    assert await redis_client.xgroup_destroy(stream, LINKED_GROUP) == 1
    await send(client, vid, later)
    expected = {e["id"] for e in first + later}
    assert await eventually(lambda: timeline_ids(client, body["id"]), lambda got: got == expected, 30) == expected
