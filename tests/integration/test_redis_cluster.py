"""Stitcher on a Redis Cluster: what only a cluster can get wrong (run with TEST_REDIS_CLUSTER=1, which starts a
3-master cluster; skipped on one Redis). The tracker, stitch, worker and race tests run on the same cluster
unchanged (``make test``'s cluster pass in CI)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient
from redis.crc import key_slot

from stitcher.app import init_app as init_service
from tests.conftest import auth
from tests.helpers import eventually, recent_page_views
from tests.redis_cluster import local_cluster
from tracker.app import init_app as init_tracker
from tracker.keys import VisitorKeys, linked_stream, partition
from tracker.redis_client import is_cluster, parse_cluster_url
from tracker.settings import Settings

Client = TestClient  # type: ignore[type-arg]
DRAIN_S = 20.0


@pytest.fixture(autouse=True)
def _cluster_only(redis_url: str) -> None:
    if not is_cluster(redis_url):
        pytest.skip("needs a Redis Cluster (TEST_REDIS_CLUSTER=1)")


def nodes(redis_url: str) -> dict[tuple[str, int], tuple[str, list[tuple[int, int]]]]:
    """Every master: its address → (node id, slot ranges), as ``CLUSTER SLOTS`` tells."""
    host, port = parse_cluster_url(redis_url).seeds[0]
    seed = redis.Redis(host=host, port=port)
    try:
        out: dict[tuple[str, int], tuple[str, list[tuple[int, int]]]] = {}
        for start, end, primary, *_ in seed.execute_command("CLUSTER SLOTS"):
            address = (primary[0].decode() or host, int(primary[1]))
            out.setdefault(address, (primary[2].decode(), []))[1].append((int(start), int(end)))
        return out
    finally:
        seed.close()


def owner(redis_url: str, slot: int) -> tuple[str, int]:
    for address, (_, ranges) in nodes(redis_url).items():
        if any(start <= slot <= end for start, end in ranges):
            return address
    raise AssertionError(f"no master owns slot {slot}")


def visitor_in(slot_owner: tuple[str, int], redis_url: str, taken: set[int]) -> str:
    """A visitor id whose partition lies on the master at ``slot_owner`` (and is not in ``taken``)."""
    for _ in range(100_000):
        vid = str(uuid.uuid4())
        p = partition(vid, Settings.partitions)
        if p not in taken and owner_of(p, redis_url) == slot_owner:
            taken.add(p)
            return vid
    raise AssertionError("no visitor found for that node")


_OWNERS: dict[tuple[str, int], tuple[str, int]] = {}  # (cluster, slot) → master


def owner_of(p: int, redis_url: str) -> tuple[str, int]:
    """The master of partition ``p`` (remembered: only the resharding test moves a slot, after its lookups)."""
    slot = key_slot(linked_stream(p).encode())
    if (redis_url, slot) not in _OWNERS:
        _OWNERS[(redis_url, slot)] = owner(redis_url, slot)
    return _OWNERS[(redis_url, slot)]


async def send(client: Client, vid: str, events: list[dict[str, Any]]) -> int:
    client.session.cookie_jar.clear()
    r = await client.post("/t", json={"vid": vid, "sent_at": events[0]["ts"], "events": events})
    await r.read()
    return r.status


async def test_linked_visitors_on_every_master_reach_their_timelines(aiohttp_client: Any, settings: Settings) -> None:
    """Visitors whose keys lie on each of the three masters subscribe; their later beacons reach their
    timelines: the stitch claims on every node and the worker reads the partition streams of every node."""
    client: Client = await aiohttp_client(init_service(settings))
    masters = list(nodes(settings.redis_url or ""))
    assert len(masters) == 3
    taken: set[int] = set()
    people = []
    for i, master in enumerate(masters):
        vid = visitor_in(master, settings.redis_url or "", taken)
        before, after = recent_page_views(3, f"before-{i}"), recent_page_views(2, f"after-{i}")
        assert await send(client, vid, before) == 204
        client.session.cookie_jar.clear()
        r = await client.post("/api/v1/contact/subscribe", headers=auth(), json={
            "contact": {"channels": [{"type": "email", "value": f"node{i}@example.com"}], "visitorIds": [vid]},
            "groups": ["newsletter"]})
        body = await r.json()
        assert r.status == 200, body
        assert body["stitchedEvents"] == 3
        assert await send(client, vid, after) == 204
        people.append((body["id"], {e["id"] for e in before + after}))

    async def timeline(contact_id: int) -> set[str]:
        r = await client.get(f"/api/v1/contact/{contact_id}/events", headers=auth(), params={"limit": "100"})
        return {e["id"] for e in (await r.json())["events"]}

    for contact_id, expected in people:
        assert await eventually(lambda c=contact_id: timeline(c), lambda got, e=expected: got == e, DRAIN_S) \
            == expected


async def test_a_slot_moved_to_another_master_loses_and_doubles_no_beacon(aiohttp_client: Any,
                                                                          tracker_settings: Settings) -> None:
    """A visitor's slot is resharded to another master under the tracker's feet. While it migrates, a new
    visitor of that slot is sent to the importing node (ASK), which cannot run APPEND over keys split between
    the two (TRYAGAIN): the beacon waits and lands once the slot has moved. The first visitor's next beacon
    then follows the slot (MOVED). Every beacon answers 204 and every event is stored once."""
    url = tracker_settings.redis_url or ""
    # a beacon waits out the migration: give it longer than the test takes to move the slot on a busy machine
    client: Client = await aiohttp_client(init_tracker(dataclasses.replace(tracker_settings, redis_timeout=20.0)))
    first = str(uuid.uuid4())
    k = VisitorKeys(first, tracker_settings.partitions)
    slot = key_slot(k.events.encode())
    source = owner(url, slot)
    target = next(a for a in nodes(url) if a != source)
    ids = {address: node_id for address, (node_id, _) in nodes(url).items()}
    events = recent_page_views(3, "first")
    assert await send(client, first, events[:2]) == 204
    second = next(v for v in (str(uuid.uuid4()) for _ in range(100_000))
                  if partition(v, tracker_settings.partitions) == partition(first, tracker_settings.partitions))
    second_events = recent_page_views(1, "second")

    admin = {address: redis.Redis(host=address[0], port=address[1], decode_responses=True) for address in ids}
    moved = False
    try:
        admin[target].execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source])
        admin[source].execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target])
        tried_again = int(admin[target].info("errorstats").get("errorstat_TRYAGAIN", {}).get("count", 0))
        sending = asyncio.create_task(send(client, second, second_events))
        await eventually(lambda: asyncio.to_thread(admin[target].info, "errorstats"),
                         lambda info: int(info.get("errorstat_TRYAGAIN", {}).get("count", 0)) > tried_again, 10)
        assert not sending.done(), "the beacon answered while its slot was still moving"
        keys = [str(key) for key in admin[source].cluster("GETKEYSINSLOT", slot, 100)]
        assert set(keys) == {k.events, k.ids}
        admin[source].execute_command("MIGRATE", target[0], target[1], "", 0, 5000, "KEYS", *keys)
        moved = True
    finally:
        # the move completes, or is called off: the session's cluster stays whole for the other tests
        for address in sorted(admin, key=lambda a: (a != target, a != source)):
            if moved:
                admin[address].execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target])
            elif address in (source, target):
                admin[address].execute_command("CLUSTER SETSLOT", slot, "STABLE")
        for conn in admin.values():
            conn.close()
    assert await sending == 204
    assert owner(url, slot) == target
    assert await send(client, first, events) == 204  # the old owner answers MOVED; two of the three are repeats

    for vid, sent in ((first, events), (second, second_events)):
        r = await client.get(f"/api/v1/visitor/{vid}/events", headers=auth())
        body = await r.json()
        assert r.status == 200, body
        assert sorted(e["id"] for e in body["events"]) == sorted(e["id"] for e in sent)


async def test_a_master_down_fails_only_its_own_visitors_beacons(aiohttp_client: Any,
                                                                 tracker_settings: Settings) -> None:
    """One master of three is killed: beacons of visitors whose slots are on the other two still answer 204,
    those of its own visitors a quick 503 (no 500, no hang); once it is back, its visitors' beacons are
    stored again without a restart of Stitcher. (A cluster of the test's own, which lets the live masters
    serve their slots while one is down: ``cluster-require-full-coverage no``.)"""
    with local_cluster(second=True, config=("--cluster-require-full-coverage", "no")) as cluster:
        # a generous timeout: a loaded machine must not turn a live master's slow answer into a 503
        settings = dataclasses.replace(tracker_settings, redis_url=cluster.url, redis_timeout=10.0)
        client: Client = await aiohttp_client(init_tracker(settings))
        taken: set[int] = set()
        vids = [visitor_in(("127.0.0.1", port), cluster.url, taken) for port in cluster.ports]
        for vid in vids:
            assert await send(client, vid, recent_page_views(1, "up")) == 204
        cluster.kill(0)
        assert [await send(client, vid, recent_page_views(1, "down")) for vid in vids] == [503, 204, 204]
        cluster.restart(0)
        back = recent_page_views(1, "back")
        assert await eventually(lambda: send(client, vids[0], back), lambda status: status == 204, 20) == 204
        r = await client.get(f"/api/v1/visitor/{vids[0]}/events", headers=auth())
        assert r.status == 200
        assert [e["id"] for e in (await r.json())["events"]] == [back[0]["id"]]  # the restart lost the rest
