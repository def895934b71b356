"""Smoke: the tracker stores a beacon in Redis."""
import uuid

from tracker.app import init_app
from tests.conftest import auth


async def test_beacon_is_stored(aiohttp_client, tracker_settings):
    """A beacon's event is readable from the visitor API."""
    client = await aiohttp_client(init_app(tracker_settings))
    body = {"events": [{"id": str(uuid.uuid4()), "type": "page_view", "ts": 1_800_000_000_000, "url": "https://x/"}]}
    r = await client.post("/t", json=body)
    assert r.status == 204, await r.text()
    vid = r.headers["X-Stitcher-Visitor"]
    r = await client.get(f"/api/v1/visitor/{vid}/events", headers=auth())
    data = await r.json()
    assert [e["type"] for e in data["events"]] == ["page_view"]
