"""Smoke: Example 2 end to end."""
import uuid

from tests.conftest import auth


async def test_example2_smoke(client):
    """Anonymous page views become the start of the subscribed contact's timeline."""
    vid = str(uuid.uuid4())
    ids = [str(uuid.uuid4()) for _ in range(3)]
    r = await client.post("/t", json={"vid": vid, "events": [
        {"id": i, "type": "page_view", "ts": 1_800_000_000_000 + n, "url": f"https://x/{n}"} for n, i in enumerate(ids)]})
    assert r.status == 204
    r = await client.post("/api/v1/contact/subscribe", headers=auth(), json={
        "contact": {"externalCustomerId": "C-1", "channels": [{"type": "email", "value": "Ann@Example.com"}],
                    "visitorIds": [vid]}, "groups": ["news"], "formType": "footer"})
    body = await r.json()
    assert r.status == 200, body
    assert body["status"] == "created" and body["stitchedEvents"] == 3
    r = await client.get(f"/api/v1/contact/{body['id']}/events", headers=auth())
    tl = await r.json()
    assert [e["id"] for e in tl["events"]] == ids
    r = await client.get(f"/api/v1/contact/{body['id']}", headers=auth())
    c = await r.json()
    assert c["channels"] == [{"type": "email", "value": "ann@example.com"}] and c["visitorIds"] == [vid]
