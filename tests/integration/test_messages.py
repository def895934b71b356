"""Prepared messages, smartsend, one-off email and the outbox (SPEC §3, issue 10) over HTTP, on real SQL."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from sqlalchemy import event

from stitcher.app import init_app
from stitcher.http_input import DB
from tests.conftest import auth
from tests.helpers import add_contact, call, timeline_events


@pytest.fixture
async def client(aiohttp_client: Any, settings: Any) -> Any:
    """The whole service without the drain worker (nothing here needs it)."""
    return await aiohttp_client(init_app(dataclasses.replace(settings, worker_enabled=False)))


async def create(client: Any, status: int = 200, **fields: Any) -> Any:
    body = {"channel": "email", "name": "welcome", "subject": "Hi {{ firstName }}",
            "from": "Shop <shop@example.com>", "body": "<p>Hello {{ firstName }} {{ lastName }}</p>"} | fields
    code, answer = await call(client, "POST", "/api/v1/messages", {k: v for k, v in body.items() if v is not None})
    assert code == status, answer
    return answer["id"] if status == 200 else answer


async def send(client: Any, message_id: int, *recipients: dict[str, Any], status: int = 200,
               headers: dict[str, str] | None = None, **extra: Any) -> Any:
    r = await client.post(f"/api/v1/message/{message_id}/smartsend", json={"recipients": list(recipients), **extra},
                          headers={**auth(), **(headers or {})})
    answer = await r.json()
    assert r.status == status, answer
    return answer


async def outbox(client: Any, path: str, **params: str) -> dict[str, Any]:
    code, body = await call(client, "GET", path, params=params)
    assert code == 200, body
    return dict(body)


async def test_a_message_is_created_listed_and_read_back(client):
    """POST /messages answers its id; GET /message/{id} and GET /messages show it, newest first."""
    first = await create(client)
    second = await create(client, channel="sms", name="code", subject=None, body="Code {{ code }}")
    code, got = await call(client, "GET", f"/api/v1/message/{first}")
    assert code == 200 and got["channel"] == "email" and got["from"] == "Shop <shop@example.com>"
    assert got["subject"] == "Hi {{ firstName }}"
    listed = await outbox(client, "/api/v1/messages", limit="1")
    assert listed["total"] == 2 and [m["id"] for m in listed["messages"]] == [second]
    rest = await outbox(client, "/api/v1/messages", limit="1", after=listed["next"])
    assert [m["id"] for m in rest["messages"]] == [first] and rest["next"] is None
    code, missing = await call(client, "GET", "/api/v1/message/999")
    assert code == 404 and missing["error"] == "message_not_found"


@pytest.mark.parametrize(("fields", "field"), [
    ({"body": "{{ firstName "}, "body"),
    ({"subject": "{% if %}"}, "subject"),
    ({"body": "{% macro m() %}{% endmacro %}"}, "body"),
    ({"body": "{% set x %}y{% endset %}"}, "body"),
    ({"channel": "push"}, "channel"),
    ({"name": ""}, "name"),
    ({"name": 5}, "name"),
    ({"body": None}, "body"),
    ({"body": "a\x00b"}, "body"),
    ({"from": "not an address"}, "from"),
    ({"subject": "two\nlines"}, "subject"),
    ({"body": "x" * (256 * 1024 + 1)}, "body"),
])
async def test_a_bad_message_is_a_400_naming_the_field(client, fields, field):
    """A template that does not parse, a refused construct or a bad field is a 400 naming the field."""
    answer = await create(client, 400, **fields)
    assert answer["error"] == "validation_failed" and field in [e["field"] for e in answer["errors"]], answer


async def test_smartsend_renders_per_recipient_and_outboxes_each_send(client):
    """Each recipient gets the templates rendered from its contact and jsonParam (string or object); the
    outbox holds the rendered text, queued, and the contact's timeline a ``message`` entry."""
    ann = await add_contact(client, externalCustomerId="C-1", firstName="Ann", lastName="Lee",
                            channels=[{"type": "email", "value": "ann@example.com"}],
                            fields=[{"id": 7, "value": "gold"}])
    bob = await add_contact(client, firstName="Bob", channels=[{"type": "email", "value": "bob@example.com"}])
    mid = await create(client, body="Hi {{ firstName }} ({{ fields['7'] }}) {{ coupon }}{{ missing.deep }}!")
    answer = await send(client, mid, {"contactId": ann, "jsonParam": '{"coupon": "X1"}'},
                        {"locator": "BOB@example.com", "jsonParam": {"coupon": "Y2", "firstName": "Mallory"}})
    assert answer["id"] == 0
    r1, r2 = answer["results"]
    assert r1["status"] == r2["status"] == "OK" and r1["id"] == ann and r2["id"] == bob
    assert r2["locator"] == "BOB@example.com" and r1["locator"] == "ann@example.com"
    assert r1["requestId"] != r2["requestId"]
    sent = (await outbox(client, f"/api/v1/message/{mid}/outbox"))["outbox"]
    assert {o["contactId"]: o["body"] for o in sent} == {ann: "Hi Ann (gold) X1!", bob: "Hi Bob () Y2!"}
    assert {o["subject"] for o in sent} == {"Hi Ann", "Hi Bob"}
    assert all(o["state"] == "queued" and o["attempts"] == 0 and o["address"] for o in sent)
    mine = await outbox(client, f"/api/v1/contact/{ann}/messages")
    assert mine["total"] == 1 and mine["outbox"][0]["requestId"] == r1["requestId"]
    entries = [e for e in await timeline_events(client, ann) if e["source"] == "message"]
    assert len(entries) == 1 and entries[0]["requestId"] == r1["requestId"]


async def test_smartsend_fails_each_bad_recipient_alone_in_request_order(client):
    """Unknown, deleted, channel-less contacts, a disagreeing lower-priority field and a bad field each fail
    their own recipient (saying why); the others are sent; results keep the request's order."""
    ann = await add_contact(client, externalCustomerId="C-1", channels=[{"type": "email", "value": "ann@example.com"}])
    bob = await add_contact(client, externalCustomerId="C-2", channels=[{"type": "email", "value": "bob@example.com"}])
    gone = await add_contact(client, externalCustomerId="C-3", channels=[{"type": "email", "value": "c@example.com"}])
    mute = await add_contact(client, externalCustomerId="C-4", channels=[{"type": "sms", "value": "+380671234567"}])
    assert (await call(client, "DELETE", f"/api/v1/contact/{gone}"))[0] == 200
    mid = await create(client)
    results = (await send(client, mid,
                          {"contactId": 99999},
                          {"contactId": ann, "externalCustomerId": "C-2"},
                          {"externalCustomerId": "C-1", "locator": "bob@example.com"},
                          {"contactId": gone},
                          {"contactId": mute},
                          {"locator": "nobody@example.com"},
                          {"locator": "not a locator"},
                          {"contactId": ann, "jsonParam": "{not json"},
                          {"externalCustomerId": "C-2", "locator": "bob@example.com"},
                          {},
                          "a string"))["results"]
    assert [r["status"] for r in results] == ["ERROR"] * 8 + ["OK"] + ["ERROR"] * 2
    messages = [r["message"] for r in results]
    assert "99999 not found" in messages[0]
    assert messages[1].startswith("externalCustomerId names contact") and str(bob) in messages[1]
    assert messages[2].startswith("locator names contact") and "externalCustomerId" in messages[2]
    assert "deleted" in messages[3] and "no email channel" in messages[4]
    assert "no contact has this locator" in messages[5] and "locator" in messages[6]
    assert "jsonParam" in messages[7] and results[8]["id"] == bob
    assert all(r["requestId"] is None for i, r in enumerate(results) if i != 8)
    assert (await outbox(client, f"/api/v1/message/{mid}/outbox"))["total"] == 1


async def test_a_render_that_grows_past_the_cap_fails_that_recipient(client):
    """A template that would grow past the output cap fails its recipient, not the request (no 500)."""
    await add_contact(client, channels=[{"type": "email", "value": "ann@example.com"}])
    mid = await create(client, body="{% for i in range(n) %}{{ 'x' * 1000 }}{% endfor %}")
    small, big = (await send(client, mid, {"locator": "ann@example.com", "jsonParam": {"n": 2}},
                             {"locator": "ann@example.com", "jsonParam": {"n": 9000}}))["results"]
    assert small["status"] == "OK" and big["status"] == "ERROR" and "could not be rendered" in big["message"]


async def test_an_idempotency_key_sends_nothing_twice(client):
    """A repeat with the same Idempotency-Key answers the same results and writes no second outbox row; the
    same key on another message, or concurrent repeats, are handled alike."""
    await add_contact(client, channels=[{"type": "email", "value": "ann@example.com"}])
    mid = await create(client)
    key = {"Idempotency-Key": "send-1"}
    first = await send(client, mid, {"locator": "ann@example.com"}, headers=key)
    again = await asyncio.gather(*[send(client, mid, {"locator": "ann@example.com"}, headers=key)
                                   for _ in range(3)])
    assert all(a == first for a in again)
    assert (await outbox(client, f"/api/v1/message/{mid}/outbox"))["total"] == 1
    other = await create(client)
    assert (await send(client, other, {"locator": "ann@example.com"}, headers=key))["results"][0]["requestId"] \
        != first["results"][0]["requestId"]
    both = await asyncio.gather(*[send(client, mid, {"locator": "ann@example.com"},
                                       headers={"Idempotency-Key": "race"}) for _ in range(4)])
    assert all(b == both[0] for b in both)
    assert (await outbox(client, f"/api/v1/message/{mid}/outbox"))["total"] == 2


async def test_smartsend_reads_recipients_set_wise(client):
    """1000 recipients cost a bounded number of SELECTs, not one per recipient."""
    for i in range(3):
        await add_contact(client, channels=[{"type": "email", "value": f"u{i}@example.com"}])
    mid = await create(client)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = client.app[DB].engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        answer = await send(client, mid, *[{"locator": f"u{i % 5}@example.com"} for i in range(1000)])
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert sum(r["status"] == "OK" for r in answer["results"]) == 600
    assert sum(s.lstrip().upper().startswith("SELECT") for s in statements) <= 8, statements


async def test_one_off_email_goes_to_known_addresses(client):
    """POST /message/email sends the given email to each known address; unknown or bad ones fail alone."""
    ann = await add_contact(client, channels=[{"type": "email", "value": "ann@example.com"}])
    code, answer = await call(client, "POST", "/api/v1/message/email", {
        "from": "shop@example.com", "subject": "News", "htmlText": "<b>{{ not rendered }}</b>",
        "plainText": "News", "emails": ["Ann@Example.com", "who@example.com", "bad", 5], "tags": ["t"]})
    assert code == 200, answer
    assert [r["status"] for r in answer["results"]] == ["OK", "ERROR", "ERROR", "ERROR"]
    assert answer["results"][0]["id"] == ann
    sent = (await outbox(client, f"/api/v1/contact/{ann}/messages"))["outbox"]
    assert len(sent) == 1 and sent[0]["messageId"] is None and sent[0]["body"] == "<b>{{ not rendered }}</b>"
    assert sent[0]["plainText"] == "News" and sent[0]["subject"] == "News"


async def test_a_merge_moves_the_losers_sends_and_an_erase_removes_them(client):
    """The outbox follows a contact into the one it is merged into; an erase takes its sends with it."""
    loser = await add_contact(client, channels=[{"type": "email", "value": "ann@example.com"}])
    mid = await create(client)
    assert (await send(client, mid, {"contactId": loser}))["results"][0]["status"] == "OK"
    winner = await add_contact(client, externalCustomerId="C-9", channels=[{"type": "sms", "value": "+380671234567"}])
    merged = await add_contact(client, externalCustomerId="C-9",
                               channels=[{"type": "email", "value": "ann@example.com"}])
    assert merged == winner
    assert (await outbox(client, f"/api/v1/contact/{winner}/messages"))["total"] == 1
    assert (await call(client, "DELETE", f"/api/v1/contact/{winner}", params={"erase": "true"}))[0] == 200
    assert (await outbox(client, f"/api/v1/message/{mid}/outbox"))["total"] == 0


@pytest.mark.parametrize("raw", [
    b"[]", b'{"recipients": []}', b'{"recipients": {}}', b'{"recipients": "x"}',
    b'{"recipients": [1], "recipients": [2]}',
    b'{"recipients": [{"contactId": 1}], "fromName": "a\\nb"}', b'{"recipients": [{"locator": "a\\u0000@x.com"}]}',
    b'{"recipients": [{"contactId": 1e400}]}', b"{" * 300, b'{"recipients": [' + b"{}," * 1000 + b"{}]}",
])
async def test_hostile_smartsend_bodies_are_4xx(client, raw):
    """Wrong types, duplicate keys, NUL, huge numbers, nesting and too many recipients: a JSON 4xx."""
    mid = await create(client)
    r = await client.post(f"/api/v1/message/{mid}/smartsend", data=raw,
                          headers={**auth(), "Content-Type": "application/json"})
    answer = await r.json()
    assert 400 <= r.status < 500 and answer["error"] and answer["message"], answer


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/v1/message/abc"), ("GET", "/api/v1/message/0"), ("GET", "/api/v1/message/99999999999999999999"),
    ("POST", "/api/v1/message/-1/smartsend"), ("GET", "/api/v1/message/1/outbox?limit=0"),
    ("GET", "/api/v1/messages?after=x"), ("GET", "/api/v1/messages?limit=%00"),
    ("GET", "/api/v1/contact/1/messages"), ("GET", "/api/v1/message/5/outbox"),
    ("POST", "/api/v1/message/5/smartsend"),
])
async def test_hostile_paths_and_parameters_are_4xx(client, method, path):
    """Bad ids, cursors, limits and unknown messages or contacts: a JSON 4xx, never a 500."""
    r = await client.request(method, path, json={"recipients": [{"contactId": 1}]}, headers=auth())
    answer = await r.json()
    assert 400 <= r.status < 500 and answer["error"], answer


@pytest.mark.parametrize("body", [
    [], {"emails": "a@b.c"}, {"from": "a@b.c", "subject": "s", "htmlText": "h", "emails": []},
    {"from": "a@b.c", "subject": "s", "htmlText": "h", "emails": ["a@b.c"], "tags": [{"x": 1}]},
    {"from": 1, "subject": ["s"], "htmlText": None, "emails": ["a@b.c"]},
])
async def test_hostile_one_off_email_bodies_are_400(client, body):
    """A one-off email with wrong types or no addresses is a 400 in the error shape."""
    code, answer = await call(client, "POST", "/api/v1/message/email", body)
    assert code == 400 and answer["error"] == "validation_failed", answer


async def test_a_bad_idempotency_key_is_a_400(client):
    """An Idempotency-Key that is too long is refused before anything is sent."""
    mid = await create(client)
    answer = await send(client, mid, {"contactId": 1}, status=400, headers={"Idempotency-Key": "k" * 257})
    assert answer["errors"][0]["field"] == "Idempotency-Key"


@pytest.mark.parametrize("path", ["/api/v1/messages", "/api/v1/message/email"])
@pytest.mark.parametrize("raw", [
    b'{"channel": "email", "channel": "sms"}', b'{"name": "a\\u0000"}', b"{" * 300, b'{"n": 1e999}',
    b'{"n": 99999999999999999999999}', b"not json", b'"a string"', b"null",
])
async def test_hostile_message_bodies_are_4xx(client, path, raw):
    """Duplicate keys, NUL, nesting, huge numbers and non-objects on the create and one-off bodies: a JSON 4xx."""
    r = await client.post(path, data=raw, headers={**auth(), "Content-Type": "application/json"})
    answer = await r.json()
    assert 400 <= r.status < 500 and answer["error"] and answer["message"], answer
