"""Orders (SPEC §3, issue 9): POST /api/v1/orders and GET /api/v1/contact/{id}/orders over HTTP, on real SQL.

Upsert by externalOrderId, the buyer found by externalCustomerId > email > phone and created if none (never
updated), one ``order<STATUS>`` timeline entry per status reached, bad orders failing alone, merges and erase,
and the races of two requests about one order or one new customer.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import orjson
from sqlalchemy import event

from stitcher.http_input import DB
from tests.conftest import auth
from tests.helpers import call, sql_scalar, timeline_ids
from tests.helpers import timeline_events as events_of


def order(ext: str, status: str = "INITIALIZED", **fields: Any) -> dict[str, Any]:
    """An order as a shop plugin sends it."""
    body: dict[str, Any] = {
        "externalOrderId": ext, "externalCustomerId": "C-1", "status": status,
        "date": "2026-11-30T10:11:10.7022176+03:00", "totalCost": 59.9, "currency": "uah",
        "email": "Ann@Example.com", "phone": "+380 67 123 45 67", "firstName": "Ann", "lastName": "Lee",
        "shipping": "5.00", "restoreUrl": "https://shop.example/cart/1", "deliveryMethod": "courier",
        "items": [{"externalItemId": "SKU-1", "name": "Mug", "quantity": 2, "cost": 27.45,
                   "url": "https://shop.example/mug", "category": "kitchen"}],
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


async def post(client: Any, *orders: dict[str, Any], status: int = 200) -> dict[str, Any]:
    code, body = await call(client, "POST", "/api/v1/orders", {"orders": list(orders)})
    assert code == status, body
    return dict(body)


async def orders_of(client: Any, contact_id: int, **params: str) -> dict[str, Any]:
    code, body = await call(client, "GET", f"/api/v1/contact/{contact_id}/orders", params=params)
    assert code == 200, body
    return dict(body)


async def test_an_order_life_cycle_puts_each_status_on_the_timeline_once(client):
    """INITIALIZED → IN_PROGRESS → DELIVERED updates one order and adds one timeline entry per status; a resend,
    or a status reached before, adds nothing."""
    first = await post(client, order("O-1"))
    assert first["created"] == 1 and first["failed"] == []
    landed = first["orders"][0]
    assert landed["status"] == "created" and landed["contactStatus"] == "created"
    cid = landed["contactId"]
    for status in ("IN_PROGRESS", "DELIVERED"):
        again = await post(client, order("O-1", status))
        assert again["orders"][0] | {"status": "updated"} == again["orders"][0]
        assert again["orders"][0]["id"] == landed["id"] and again["orders"][0]["contactId"] == cid
    resend = await post(client, order("O-1", "DELIVERED"))
    assert resend["unchanged"] == 1 and resend["orders"][0]["status"] == "unchanged"
    back = await post(client, order("O-1", "IN_PROGRESS"))  # a status seen before: the order changes, no event
    assert back["orders"][0]["status"] == "updated"
    events = [e for e in await events_of(client, cid) if e["source"] == "order"]
    assert [e["type"] for e in events] == ["orderINITIALIZED", "orderIN_PROGRESS", "orderDELIVERED"]
    assert all(e["externalOrderId"] == "O-1" and e["orderId"] == landed["id"] for e in events)
    listed = await orders_of(client, cid)
    assert listed["total"] == 1 and listed["orders"][0]["status"] == "IN_PROGRESS"
    assert listed["orders"][0]["externalOrderId"] == "O-1"
    assert listed["orders"][0]["currency"] == "UAH" and listed["orders"][0]["shipping"] == 5
    assert listed["orders"][0]["date"] == "2026-11-30T07:11:10.702Z"
    assert listed["orders"][0]["items"][0]["externalItemId"] == "SKU-1"


async def test_an_order_creates_its_buyer_with_names_and_identifiers(client):
    """No contact matches: one is created with the order's external ID, names, email and phone."""
    cid = (await post(client, order("O-2", externalCustomerId="C-NEW")))["orders"][0]["contactId"]
    code, contact = await call(client, "GET", f"/api/v1/contact/{cid}")
    assert code == 200
    assert contact["externalCustomerId"] == "C-NEW"
    assert (contact["firstName"], contact["lastName"]) == ("Ann", "Lee")
    assert contact["channels"] == [{"type": "email", "value": "ann@example.com"},
                                   {"type": "sms", "value": "+380671234567"}]
    code, log = await call(client, "GET", f"/api/v1/contact/{cid}/identity-log")
    assert log["entries"][0] | {"action": "created", "source": "order", "externalOrderId": "O-2"} == \
        log["entries"][0]


async def test_an_order_never_updates_an_existing_contact(client):
    """The contact holding the external ID gets the order; its names and channels stay as they were."""
    code, made = await call(client, "POST", "/api/v1/contact", {
        "externalCustomerId": "C-OLD", "firstName": "Ann", "channels": [{"type": "email", "value": "ann@old.example"}]})
    assert code == 200
    before = (await call(client, "GET", f"/api/v1/contact/{made['id']}"))[1]
    landed = (await post(client, order("O-3", externalCustomerId="C-OLD", firstName="Bob", lastName="Other",
                                       email="bob@new.example", phone="+380671112233")))["orders"][0]
    assert landed["contactId"] == made["id"] and landed["contactStatus"] == "found"
    assert landed["foundBy"] == "externalCustomerId"
    after = (await call(client, "GET", f"/api/v1/contact/{made['id']}"))[1]
    assert after == before


async def test_an_email_match_without_an_external_id_gets_the_order_but_not_the_id(client, database_url):
    """The add/update rules find the unidentified email contact; the order does not give it its external ID."""
    code, made = await call(client, "POST", "/api/v1/contact",
                            {"channels": [{"type": "email", "value": "eve@x.example"}]})
    assert code == 200
    landed = (await post(client, order("O-4", externalCustomerId="C-EVE", email="EVE@x.example", phone=None)))
    assert landed["orders"][0]["contactId"] == made["id"] and landed["orders"][0]["foundBy"] == "email"
    contact = (await call(client, "GET", f"/api/v1/contact/{made['id']}"))[1]
    assert contact["externalCustomerId"] is None
    assert await sql_scalar(database_url, "SELECT count(*) FROM contacts") == 1


async def test_a_soft_deleted_holder_gets_the_order_and_stays_deleted(client):
    """An order for a deleted contact's external ID is kept on it (for a restore) and does not restore it."""
    code, made = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "C-DEL", "firstName": "Del"})
    assert code == 200
    assert (await call(client, "DELETE", f"/api/v1/contact/{made['id']}"))[0] == 200
    landed = (await post(client, order("O-5", externalCustomerId="C-DEL")))["orders"][0]
    assert landed["contactId"] == made["id"]
    assert (await call(client, "GET", f"/api/v1/contact/{made['id']}"))[0] == 404
    assert (await call(client, "GET", f"/api/v1/contact/{made['id']}/orders"))[0] == 404
    assert (await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "C-DEL"}))[1]["status"] == "restored"
    assert (await orders_of(client, made["id"]))["total"] == 1


async def test_a_thousand_orders_land_in_one_request(client, database_url):
    """1000 orders (500 buyers, two orders each) land at once: 500 contacts, 1000 orders, 1000 timeline entries."""
    orders = [order(f"K-{i}", externalCustomerId=f"C-K{i // 2}", email=f"k{i // 2}@bulk.example", phone=None,
                    date=f"2026-11-{1 + i % 28:02d}T10:00:00Z") for i in range(1000)]
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = client.server.app[DB].engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        body = await post(client, *orders)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert body["created"] == 1000 and body["failed"] == [] and len(body["orders"]) == 1000
    # set-based: a few statements for the whole request, not one per order
    assert len(statements) < 40, Counter(s[:80] for s in statements).most_common(3)
    assert [o["index"] for o in body["orders"]] == list(range(1000))
    assert sum(o["contactStatus"] == "created" for o in body["orders"]) == 500
    assert body["orders"][0]["contactId"] == body["orders"][1]["contactId"]
    assert await sql_scalar(database_url, "SELECT count(*) FROM contacts") == 500
    assert await sql_scalar(database_url, "SELECT count(*) FROM orders") == 1000
    assert await sql_scalar(database_url, "SELECT count(*) FROM timeline WHERE source = 'order'") == 1000
    again = await post(client, *orders)
    assert again["unchanged"] == 1000


async def test_more_than_a_thousand_orders_or_none_is_a_400(client, database_url):
    """The body must hold 1 to 1000 orders; nothing is stored otherwise."""
    for payload in ({"orders": [order(f"X-{i}") for i in range(1001)]}, {"orders": []}, {"orders": {}}, [], {}):
        code, body = await call(client, "POST", "/api/v1/orders", payload)
        assert code == 400, body
        assert body["errors"][0]["field"] in ("orders", "body")
    assert await sql_scalar(database_url, "SELECT count(*) FROM orders") == 0


async def test_a_bad_order_fails_alone_with_its_index_and_reason(client, database_url):
    """Bad orders are named by index and field; the good ones beside them land."""
    body = await post(client, order("G-1"), order("B-1", "SHIPPED"), order("G-2"),
                      order("B-2", email="not-an-email"), order("B-3", date="yesterday"),
                      order("B-4", externalCustomerId=None, email=None, phone=None),
                      order("B-5", totalCost=-1, items=[{"externalItemId": "x"}]), "not an order")
    assert [o["externalOrderId"] for o in body["orders"]] == ["G-1", "G-2"]
    failed = {f["index"]: f for f in body["failed"]}
    assert sorted(failed) == [1, 3, 4, 5, 6, 7]
    assert failed[1]["errors"] == [{"field": "orders[1].status", "message": failed[1]["errors"][0]["message"]}]
    assert "INITIALIZED" in failed[1]["error"]
    assert failed[3]["errors"][0]["field"] == "orders[3].email"
    assert failed[4]["errors"][0]["field"] == "orders[4].date"
    assert failed[5]["errors"][0]["field"] == "orders[5].externalCustomerId"
    assert {e["field"] for e in failed[6]["errors"]} == {
        "orders[6].totalCost", "orders[6].items[0].name", "orders[6].items[0].quantity", "orders[6].items[0].cost"}
    assert failed[7]["errors"][0]["field"] == "orders[7]"
    assert await sql_scalar(database_url, "SELECT count(*) FROM orders") == 2
    code, none_landed = await call(client, "POST", "/api/v1/orders", {"orders": [order("B-6", "NOPE")]})
    assert code == 400 and none_landed["failed"][0]["index"] == 0


async def test_blank_identifiers_are_ignored_and_named(client):
    """A phone of " " or an externalCustomerId of 0 is absent (never used to find anyone) and named."""
    body = await post(client, order("I-1", externalCustomerId=0, phone=" "))
    landed = body["orders"][0]
    assert landed["ignored"] == ["orders[0].externalCustomerId", "orders[0].phone"]
    contact = (await call(client, "GET", f"/api/v1/contact/{landed['contactId']}"))[1]
    assert contact["externalCustomerId"] is None
    assert contact["channels"] == [{"type": "email", "value": "ann@example.com"}]


async def test_hostile_orders_get_a_4xx_never_a_500(client, database_url):
    """Wrong types, huge values, deep nesting, NUL, lone surrogates and duplicate keys: the order holding them
    fails alone, naming the place (the body's own structure: a 400); never a 500."""
    deep: Any = "x"
    for _ in range(40):
        deep = [deep]
    bad_orders = [
        order("H-1", totalCost={"amount": 1}), order("H-2", items="mug"), order("H-3", items=[[1]]),
        order("H-4", firstName="a" * 100_000), order("H-5", totalCost=1e300), order("H-6", status=None),
        order("H-7", externalOrderId="y" * 300), order("H-8", currency="dollars"), order("H-9", date=12345),
        order({"id": 1}), order("H-11", items=[{"externalItemId": "s", "name": "n", "quantity": True, "cost": 1}]),
        order("H-12", date="9999-12-31T00:00:00"), order("H-13", storeId=["a"]),
    ]
    body = await post(client, *bad_orders, status=400)
    assert sorted(f["index"] for f in body["failed"]) == list(range(len(bad_orders)))
    for raw in (b'{"orders": [], "orders": []}', b'{"orders": [{}], "x\\u0000": 1}', b"[" * 100_000, b"not json"):
        r = await client.post("/api/v1/orders", data=raw, headers={**auth(), "Content-Type": "application/json"})
        assert r.status == 400, (raw, await r.text())
        assert (await r.json())["errors"]
    good = orjson.dumps(order("H-OK")).decode()
    raw_orders = [good,
                  '{"externalOrderId": "H-NUL", "firstName": "a\\u0000b"}',
                  '{"externalOrderId": "H-TWICE", "status": "DELIVERED", "status": "CANCELLED"}',
                  '{"externalOrderId": "H-BIG", "totalCost": 1e400, "taxes": 99999999999999999999}',
                  '{"externalOrderId": "H-DEEP", "items": [' + "[" * 40 + "]" * 40 + "]}",
                  '{"externalOrderId": "H-SURROGATE", "lastName": "\\ud800"}']
    r = await client.post("/api/v1/orders", data=f'{{"orders": [{", ".join(raw_orders)}]}}'.encode(),
                          headers={**auth(), "Content-Type": "application/json"})
    assert r.status == 200, await r.text()
    answer = await r.json()
    assert [o["externalOrderId"] for o in answer["orders"]] == ["H-OK"]
    failed = {f["index"]: f for f in answer["failed"]}
    assert failed[1]["errors"] == [{"field": "orders[1].firstName", "message": "must not contain a NUL character"}]
    assert failed[2]["errors"][0]["field"] == "orders[2].status"
    assert {e["field"] for e in failed[3]["errors"]} == {"orders[3].totalCost", "orders[3].taxes"}
    assert failed[4]["errors"][0]["field"].startswith("orders[4].items[0]")
    assert failed[5]["externalOrderId"] == "H-SURROGATE" and failed[5]["errors"][0]["field"] == "orders[5].lastName"
    assert await sql_scalar(database_url, "SELECT count(*) FROM orders") == 1
    r = await client.post("/api/v1/orders", data=b"{}", headers={**auth(), "Content-Type": "application/xml"})
    assert r.status == 415
    for path in ("/api/v1/contact/abc/orders", "/api/v1/contact/1/orders?limit=0",
                 "/api/v1/contact/1/orders?after=x", "/api/v1/contact/1/orders?after=1.2%00"):
        code, _ = await call(client, "GET", path)
        assert code == 400, path
    assert await sql_scalar(database_url, "SELECT count(*) FROM orders") == 1


async def test_orders_list_newest_first_paginated_and_404_for_unknown(client):
    """GET /contact/{id}/orders: newest first by date, keyset pages with `next`; unknown contact → 404."""
    orders = [order(f"P-{i}", date=f"2026-01-{10 + i:02d}T00:00:00Z") for i in range(5)]
    cid = (await post(client, *orders))["orders"][0]["contactId"]
    first = await orders_of(client, cid, limit="2")
    assert [o["externalOrderId"] for o in first["orders"]] == ["P-4", "P-3"] and first["total"] == 5
    second = await orders_of(client, cid, limit="2", after=first["next"])
    third = await orders_of(client, cid, limit="2", after=second["next"])
    assert [o["externalOrderId"] for o in second["orders"] + third["orders"]] == ["P-2", "P-1", "P-0"]
    assert third["next"] is None
    assert (await call(client, "GET", "/api/v1/contact/999999/orders"))[0] == 404
    assert {e["source"] for e in await events_of(client, cid)} == {"order"}


async def test_a_merge_moves_the_orders_and_records_them(client):
    """An unidentified buyer merged into an identified contact brings its orders (and their timeline)."""
    landed = (await post(client, order("M-1", externalCustomerId=None, phone=None, email="mia@x.example")))
    loser = landed["orders"][0]["contactId"]
    code, winner = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "C-MIA"})
    assert code == 200
    code, merged = await call(client, "POST", "/api/v1/contact", {
        "externalCustomerId": "C-MIA", "channels": [{"type": "email", "value": "mia@x.example"}]})
    assert code == 200 and merged["mergedContactIds"] == [loser] and merged["id"] == winner["id"]
    moved = await orders_of(client, winner["id"])
    assert [o["externalOrderId"] for o in moved["orders"]] == ["M-1"]
    assert f"order-{landed['orders'][0]['id']}-INITIALIZED" in await timeline_ids(client, winner["id"])
    log = (await call(client, "GET", f"/api/v1/contact/{winner['id']}/identity-log"))[1]
    entry = next(e for e in log["entries"] if e["action"] == "merged")
    assert entry["orderIds"] == [landed["orders"][0]["id"]]
    again = await post(client, order("M-1", "DELIVERED", externalCustomerId=None, phone=None, email="mia@x.example"))
    assert again["orders"][0]["contactId"] == winner["id"]


async def test_erase_removes_the_orders(client, database_url):
    """Erasing a person removes their orders (the foreign key cascades); a resend starts a new contact."""
    landed = (await post(client, order("E-1"), order("E-2")))["orders"]
    cid = landed[0]["contactId"]
    code, _ = await call(client, "DELETE", f"/api/v1/contact/{cid}", params={"erase": "true"})
    assert code == 200
    assert await sql_scalar(database_url, "SELECT count(*) FROM orders") == 0
    assert await sql_scalar(database_url, "SELECT count(*) FROM timeline") == 0
    fresh = (await post(client, order("E-1")))["orders"][0]
    assert fresh["status"] == "created" and fresh["contactStatus"] == "created" and fresh["contactId"] != cid


async def test_concurrent_posts_of_one_order_make_one_order_and_one_contact(client, database_url):
    """Eight requests posting the same new order at once: one contact, one order, one timeline entry."""
    bodies = await asyncio.gather(*(post(client, order("R-1", externalCustomerId="C-RACE")) for _ in range(8)))
    assert sorted(b["orders"][0]["status"] for b in bodies) == ["created"] + ["unchanged"] * 7
    assert await sql_scalar(database_url, "SELECT count(*) FROM contacts") == 1
    assert await sql_scalar(database_url, "SELECT count(*) FROM orders") == 1
    assert await sql_scalar(database_url, "SELECT count(*) FROM timeline") == 1


async def test_concurrent_orders_of_one_new_customer_make_one_contact(client):
    """Two requests with different orders of one new buyer, at once: one contact holds both orders (by
    external ID, and by email alone)."""
    for label, who in (("ext", {"externalCustomerId": "C-TWO", "email": None}),
                       ("email", {"externalCustomerId": None, "email": "two@x.example"})):
        bodies = await asyncio.gather(*(post(client, order(f"T-{label}-{i}", phone=None, **who)) for i in range(6)))
        contacts = {b["orders"][0]["contactId"] for b in bodies}
        assert len(contacts) == 1, (label, bodies)
        assert sum(b["orders"][0]["contactStatus"] == "created" for b in bodies) == 1
        assert (await orders_of(client, contacts.pop()))["total"] == 6


async def test_an_order_racing_a_subscribe_for_one_new_email_makes_one_contact(client, database_url):
    """An order and a subscribe for the same unknown email, at once: they serialise on the email's key and
    end on one contact, whichever came first."""
    for i in range(4):
        email = f"race{i}@x.example"
        (code, sub), placed = await asyncio.gather(
            call(client, "POST", "/api/v1/contact/subscribe",
                 {"contact": {"channels": [{"type": "email", "value": email}]}}),
            post(client, order(f"S-{i}", externalCustomerId=None, phone=None, email=email)))
        assert code == 200, sub
        assert placed["orders"][0]["contactId"] == sub["id"]
    assert await sql_scalar(database_url, "SELECT count(*) FROM contacts") == 4


async def test_a_phone_only_order_finds_its_buyer_by_phone_among_several(client):
    """Two identified contacts share a phone: the most recently updated one gets a phone-only order."""
    ids = []
    for ext in ("C-P1", "C-P2", "C-P1"):  # the last call touches C-P1, now the most recently updated
        body = {"externalCustomerId": ext, "channels": [{"type": "sms", "value": "+380 67 000 11 22"}]}
        code, made = await call(client, "POST", "/api/v1/contact", body)
        assert code == 200, made
        ids.append(made["id"])
        await asyncio.sleep(0.01)
    assert ids[0] == ids[2] != ids[1]
    landed = (await post(client, order("PH-1", externalCustomerId=None, email=None, phone="380670001122")))["orders"][0]
    assert (landed["contactId"], landed["foundBy"]) == (ids[0], "sms")


async def test_contacts_an_order_creates_are_handed_to_the_held_events_seam(client, monkeypatch):
    """Inside the transaction, each created buyer is passed to held_events.attach with its identity keys."""
    from stitcher.store import held_events

    seen: list[dict[int, list[str]]] = []

    async def attach(_db: Any, _session: Any, keys_by_contact: Any) -> int:
        seen.append({cid: sorted(keys) for cid, keys in keys_by_contact.items()})
        return 0

    monkeypatch.setattr(held_events, "attach", attach)
    body = await post(client, order("HE-1", externalCustomerId="C-HE"), order("HE-2", externalCustomerId="C-HE"))
    cid = body["orders"][0]["contactId"]
    assert seen == [{cid: ["email:ann@example.com", "ext:C-HE", "sms:+380671234567"]}]
    await post(client, order("HE-3", externalCustomerId="C-HE"))
    assert len(seen) == 1  # a found buyer gets no new identifiers from an order


async def test_an_order_racing_the_erase_of_its_buyer_lands_before_or_after_never_half(client, database_url):
    """Erase and an order for the same person at once: the order is erased with the person, or lands on a
    new contact made after the erase; never a 500, never an order of a half-erased person."""
    for i in range(4):
        ext = f"C-ER{i}"
        cid = (await post(client, order(f"ER-{i}-a", externalCustomerId=ext)))["orders"][0]["contactId"]
        (code, _), placed = await asyncio.gather(
            call(client, "DELETE", f"/api/v1/contact/{cid}", params={"erase": "true"}),
            post(client, order(f"ER-{i}-b", externalCustomerId=ext)))
        assert code == 200
        landed = placed["orders"][0]
        left = await sql_scalar(database_url, "SELECT count(*) FROM orders WHERE external_order_id LIKE :p",
                                p=f"ER-{i}-%")
        if landed["contactId"] == cid:  # before the erase: gone with the person
            assert left == 0
        else:  # after it: a new contact with the ID, holding only this order
            assert landed["contactStatus"] == "created" and left == 1
            assert (await orders_of(client, landed["contactId"]))["total"] == 1


async def test_oversized_orders_are_refused_with_a_reason(client):
    """More than 1000 items fails that order alone; a body past 8 MiB is a 413, read no further."""
    items = [{"externalItemId": f"S{j}", "name": "n", "quantity": 1, "cost": 1} for j in range(1001)]
    body = await post(client, order("BIG-1", items=items), order("OK-1"))
    assert body["failed"][0]["errors"] == [
        {"field": "orders[0].items", "message": "must be a list of at most 1000 items"}]
    assert [o["externalOrderId"] for o in body["orders"]] == ["OK-1"]
    r = await client.post("/api/v1/orders", data=b" " * (8 * 1024 * 1024 + 1),
                          headers={**auth(), "Content-Type": "application/json"})
    assert r.status == 413


HOSTILE_VALUES: list[Any] = [None, True, -1, 0, 2**63 - 1, -(2**63), 1e308, -0.0, "", " ", "\u202e", "x" * 5000,
                             "😀" * 300, [], {}, [[[]]], {"a": {"b": 1}}, ["INITIALIZED"]]


async def test_every_field_with_every_hostile_value_lands_or_fails_alone(client):
    """Each order field and item field set to each hostile value, all in one request: every order either
    lands or fails alone with a reason, and the request never answers 500."""
    fields = [*order("F").keys(), "taxes", "discount", "paymentMethod", "statusDescription", "storeId", "source",
              "deliveryAddress"]
    item_fields = ["externalItemId", "name", "quantity", "cost", "url", "imageUrl", "category", "description"]
    orders = []
    for key in fields:
        orders += [{**order(f"F-{key}-{j}"), key: value} for j, value in enumerate(HOSTILE_VALUES)]
    for key in item_fields:
        orders += [order(f"FI-{key}-{j}", items=[{**order("x")["items"][0], key: value}])
                   for j, value in enumerate(HOSTILE_VALUES)]
    assert len(orders) <= 1000
    code, body = await call(client, "POST", "/api/v1/orders", {"orders": orders})
    assert code == 200, body
    assert len(body["orders"]) + len(body["failed"]) == len(orders)
    assert all(f["errors"] and f["error"] for f in body["failed"])


async def test_an_order_date_at_the_ends_of_the_calendar_with_an_offset_fails_alone(client, database_url):
    """``0001-01-01T00:00:00+14:00`` and ``9999-12-31T23:59:59-14:00`` parse, but their UTC instant falls
    outside what a datetime holds: the order fails naming its date (it answered 500), the others land."""
    body = await post(client, order("D-OK"), order("D-1", date="0001-01-01T00:00:00+14:00"),
                      order("D-2", date="9999-12-31T23:59:59-14:00"))
    assert [o["externalOrderId"] for o in body["orders"]] == ["D-OK"]
    assert [(f["index"], f["errors"][0]["field"]) for f in body["failed"]] == [(1, "orders[1].date"),
                                                                                (2, "orders[2].date")]
    assert await sql_scalar(database_url, "SELECT count(*) FROM orders") == 1
