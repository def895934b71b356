"""A held API event joins its person's timeline exactly once whichever writer makes the person appear: a bulk
import row or an order's buyer, as well as add/update, PUT and subscribe (those are in ``test_events.py``).

Runs the whole service on real Redis and SQL (SQLite, or PostgreSQL through TEST_DATABASE_URL).
"""

from __future__ import annotations

import uuid
from typing import Any

from tests.conftest import auth
from tests.helpers import call
from tests.integration.test_events import event, held, post, timeline
from tests.integration.test_imports import run


async def test_a_held_event_joins_the_contact_a_bulk_import_creates(client: Any) -> None:
    address = f"imp-{uuid.uuid4().hex[:8]}@example.com"
    ext = f"IMP-{uuid.uuid4().hex[:8]}"
    by_email = await post(client, event("cartAbandoned", email=address), key=f"k-{uuid.uuid4()}")
    by_ext = await post(client, event("wishlist", externalCustomerId=ext))
    assert by_email["status"] == by_ext["status"] == "held"

    report = await run(client, [
        {"firstName": "Imported", "channels": [{"type": "email", "value": address}]},
        {"externalCustomerId": ext, "channels": [{"type": "email", "value": f"other-{address}"}]},
    ])
    assert report["status"] == "FINISHED", report
    ids = {m["index"]: m["contactId"] for m in report["mapping"]}
    assert [e["type"] for e in await timeline(client, ids[0]) if e["source"] == "api"] == ["cartAbandoned"]
    assert [e["type"] for e in await timeline(client, ids[1]) if e["source"] == "api"] == ["wishlist"]
    assert (await held(client))["events"] == []

    # importing the same rows again attaches nothing twice
    again = await run(client, [{"firstName": "Imported", "channels": [{"type": "email", "value": address}]}])
    assert again["status"] == "FINISHED"
    assert [e["type"] for e in await timeline(client, ids[0]) if e["source"] == "api"] == ["cartAbandoned"]


async def test_a_held_event_joins_the_buyer_an_order_creates(client: Any) -> None:
    address = f"buyer-{uuid.uuid4().hex[:8]}@example.com"
    first = await post(client, event("viewedProduct", email=address))
    assert first["status"] == "held"
    order = {"externalOrderId": f"O-{uuid.uuid4().hex[:8]}", "status": "INITIALIZED", "date": "2026-12-01T10:00:00Z",
             "totalCost": 10, "currency": "EUR", "email": address, "firstName": "Buyer"}
    r = await client.post("/api/v1/orders", json={"orders": [order]}, headers=auth())
    answer = await r.json()
    assert r.status == 200, answer
    status, found = await call(client, "GET", "/api/v1/contacts", params={"email": address})
    assert status == 200 and len(found) == 1, found
    events = await timeline(client, found[0]["id"])
    assert sorted(e["type"] for e in events) == ["orderINITIALIZED", "viewedProduct"]
    assert (await held(client))["events"] == []
