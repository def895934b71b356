"""What one add/update writes, read back through the API and in SQL: every profile field and channel of a new
contact (PostgreSQL writes it in one statement, SQLite in several), what an update adds and keeps, and the
identity log's rows, written in one insert at commit."""

from __future__ import annotations

from tests.conftest import auth
from tests.helpers import call, sql_scalar
from tests.helpers import get_contact as _get
from tests.helpers import identity_log as _log

DEVICE = {"appId": "shop-app", "deviceModel": "Pixel 8", "os": "android"}


async def test_a_new_contact_reads_back_as_written_with_one_created_entry(client, database_url):
    body = {"externalCustomerId": "W-1", "firstName": " Ann ", "lastName": "Lee", "languageCode": "uk",
            "address": {"town": "Kyiv", "postcode": "01001"}, "fields": [{"id": 7, "value": "vip"}],
            "channels": [{"type": "email", "value": "Ann@Example.com"}, {"type": "sms", "value": "+380671234567"},
                         {"type": "mobilepush", "value": "tok-1", "device": DEVICE},
                         {"type": "viber", "value": "380671234567"}]}
    r = await client.post("/api/v1/contact", json=body, headers={**auth(), "X-Request-Id": "req-write-1"})
    created = await r.json()
    assert r.status == 200 and created["status"] == "created" and created["externalCustomerId"] == "W-1", created
    got = await _get(client, created["id"])
    assert (got["firstName"], got["lastName"], got["languageCode"]) == ("Ann", "Lee", "uk")
    assert got["address"] == {"town": "Kyiv", "postcode": "01001"} and got["fields"] == [{"id": 7, "value": "vip"}]
    assert got["channels"] == [{"type": "email", "value": "ann@example.com"},
                               {"type": "sms", "value": "+380671234567"},
                               {"type": "mobilepush", "value": "tok-1", "device": DEVICE},
                               {"type": "viber", "value": "380671234567"}]
    assert got["createdAt"] == got["updatedAt"]
    log = await _log(client, created["id"])
    assert [(e["action"], e["externalCustomerId"], e["requestId"]) for e in log] == [
        ("created", "W-1", "req-write-1")]
    assert await sql_scalar(database_url, "SELECT count(*) FROM identity_log") == 1


async def test_a_contact_without_an_external_id_or_profile_fields(client):
    status, created = await call(client, "POST", "/api/v1/contact", {
        "channels": [{"type": "email", "value": "solo@example.com"}]})
    assert status == 200 and created["status"] == "created" and created["externalCustomerId"] is None, created
    got = await _get(client, created["id"])
    assert (got["firstName"], got["address"], got["fields"]) == (None, None, [])
    assert [(e["action"], e["externalCustomerId"]) for e in await _log(client, created["id"])] == [("created", None)]


async def test_an_update_adds_only_new_channels_keeps_the_rest_and_logs_nothing_new(client, database_url):
    status, first = await call(client, "POST", "/api/v1/contact", {
        "externalCustomerId": "W-2", "firstName": "Bob", "lastName": "Stone",
        "channels": [{"type": "email", "value": "bob@example.com"},
                     {"type": "mobilepush", "value": "tok-2", "device": DEVICE}]})
    assert status == 200, first
    before = await _get(client, first["id"])
    status, again = await call(client, "POST", "/api/v1/contact", {
        "externalCustomerId": "W-2", "firstName": "Robert",
        "channels": [{"type": "sms", "value": "+380671112233"}, {"type": "email", "value": "BOB@example.com"},
                     {"type": "mobilepush", "value": "tok-2", "device": "another phone"}]})
    assert status == 200 and again["status"] == "updated" and again["id"] == first["id"], again
    got = await _get(client, first["id"])
    assert (got["firstName"], got["lastName"]) == ("Robert", "Stone")  # a field not sent stays
    # the channels it had stay as they were, first; the new one follows
    assert got["channels"] == [{"type": "email", "value": "bob@example.com"},
                               {"type": "mobilepush", "value": "tok-2", "device": DEVICE},
                               {"type": "sms", "value": "+380671112233"}]
    assert got["updatedAt"] >= before["updatedAt"] and got["createdAt"] == before["createdAt"]
    assert [e["action"] for e in await _log(client, first["id"])] == ["created"]
    assert await sql_scalar(database_url, "SELECT count(*) FROM identifiers") == 3


async def test_an_update_by_contact_id_and_a_restore_write_their_log_entries_in_order(client):
    status, c = await call(client, "POST", "/api/v1/contact",
                           {"channels": [{"type": "email", "value": "c@example.com"}]})
    assert status == 200, c
    status, named = await call(client, "PUT", f"/api/v1/contact/{c['id']}", {"externalCustomerId": "W-3",
                                                                              "lastName": "Named"})
    assert status == 200 and named["externalCustomerId"] == "W-3", named
    status, deleted = await call(client, "DELETE", f"/api/v1/contact/{c['id']}")
    assert status == 200, deleted
    status, restored = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "W-3"})
    assert status == 200 and restored["status"] == "restored" and restored["id"] == c["id"], restored
    log = await _log(client, c["id"])
    assert [e["action"] for e in log] == ["created", "assigned_external_id", "deleted", "restored"]
    assert (log[1]["previous"], log[1]["externalCustomerId"], log[1]["foundBy"]) == (None, "W-3", "contactId")
    assert (await _get(client, c["id"]))["lastName"] == "Named"
