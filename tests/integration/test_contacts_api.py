"""The contacts API over HTTP (SPEC §1, §3): conflicts, search, validation, auth, 404s and concurrent creators.

Runs the whole service on real Redis and SQL; "nothing changed" is checked by reading the database itself.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import TABLES, auth


async def call(client: Any, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
    """One authenticated JSON call: (status, decoded body)."""
    r = await client.request(method, path, json=body, headers=auth(), **kw)
    return r.status, await r.json()


async def search(client: Any, **params: str) -> tuple[list[dict[str, Any]], int]:
    """One page of search results and the TotalCount header."""
    r = await client.get("/api/v1/contacts", params=params, headers=auth())
    assert r.status == 200, await r.text()
    return await r.json(), int(r.headers["TotalCount"])


async def bad_search(client: Any, **params: str) -> dict[str, Any]:
    r = await client.get("/api/v1/contacts", params=params, headers=auth())
    body = await r.json()
    assert r.status == 400, (params, body)
    assert body["error"] and body["message"]
    return dict(body)


async def table_counts(database_url: str) -> dict[str, int]:
    """Row counts of every table the service writes, read straight from the database."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            return {t: (await conn.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one() for t in TABLES}
    finally:
        await engine.dispose()


async def snapshot(client: Any, *contact_ids: int) -> list[Any]:
    """Everything the API shows about some contacts: the contact, its timeline and its identity log."""
    out = []
    for cid in contact_ids:
        for suffix in ("", "/events", "/identity-log"):
            out.append(await call(client, "GET", f"/api/v1/contact/{cid}{suffix}"))
    return out


def fields_of(error: dict[str, Any]) -> list[str]:
    return [e["field"] for e in error.get("errors", [])]


# --- 409 -----------------------------------------------------------------------------------------------


async def test_put_with_another_contacts_external_id_is_409_and_changes_nothing(client, database_url):
    """PUT giving B the external ID A holds answers 409 naming the conflict, and neither contact changes."""
    status, a = await call(client, "POST", "/api/v1/contact", {
        "externalCustomerId": "A-1", "firstName": "Ann", "channels": [{"type": "email", "value": "a@example.com"}]})
    status, b = await call(client, "POST", "/api/v1/contact", {
        "externalCustomerId": "B-1", "firstName": "Bob", "channels": [{"type": "email", "value": "b@example.com"}]})
    assert a["id"] != b["id"]
    before, counts = await snapshot(client, a["id"], b["id"]), await table_counts(database_url)

    status, err = await call(client, "PUT", f"/api/v1/contact/{b['id']}", {
        "externalCustomerId": "A-1", "firstName": "Changed", "lastName": "Changed",
        "channels": [{"type": "sms", "value": "+380671234567"}]})
    assert status == 409, err
    assert err["error"] and err["message"]
    assert err["identifier"] == "externalCustomerId" and err["value"] == "A-1"
    assert err["conflictingContactId"] == a["id"]
    # the same conflict through add/update naming the contact by id
    status, err = await call(client, "POST", "/api/v1/contact", {"id": b["id"], "externalCustomerId": "A-1",
                                                                 "firstName": "Changed"})
    assert status == 409 and err["conflictingContactId"] == a["id"], err
    assert await snapshot(client, a["id"], b["id"]) == before
    assert await table_counts(database_url) == counts

    # a free external ID is simply taken
    status, r = await call(client, "PUT", f"/api/v1/contact/{b['id']}", {"externalCustomerId": "B-2"})
    assert status == 200 and r["id"] == b["id"] and r["externalCustomerId"] == "B-2", r
    status, log = await call(client, "GET", f"/api/v1/contact/{b['id']}/identity-log")
    assert log["entries"][-1]["action"] == "assigned_external_id"
    assert log["entries"][-1]["externalCustomerId"] == "B-2" and log["entries"][-1]["previous"] == "B-1"
    _, total = await search(client, externalCustomerId="B-1")
    assert total == 0


# --- search --------------------------------------------------------------------------------------------


async def test_search_finds_by_normalised_email_phone_and_names(client):
    """Search matches emails and phones in their stored form whatever the spelling, names case-insensitively."""
    status, ann = await call(client, "POST", "/api/v1/contact", {
        "firstName": "Ann", "lastName": "Lee", "channels": [{"type": "email", "value": "ann@example.com"},
                                                            {"type": "sms", "value": "+380671234567"}]})
    status, bob = await call(client, "POST", "/api/v1/contact", {
        "firstName": "Bob", "lastName": "Lee", "channels": [{"type": "email", "value": "bob@example.com"}]})
    assert status == 200 and bob["id"] != ann["id"], bob

    async def ids(**params: str) -> list[int]:
        found, total = await search(client, **params)
        assert total == len(found)
        return [c["id"] for c in found]

    assert await ids(email="Ann@Example.COM") == [ann["id"]]
    assert await ids(email="  ann@example.com ") == [ann["id"]]
    assert await ids(sms="+380 (67) 123-45-67") == [ann["id"]]
    assert await ids(sms="380671234567") == [ann["id"]]
    assert await ids(firstname="ann") == [ann["id"]]
    assert await ids(lastname="LEE") == [ann["id"], bob["id"]]
    assert await ids(firstname="Bob", lastname="Lee") == [bob["id"]]
    assert await ids(email="ann@example.com", firstname="Bob") == []
    assert await ids(email="nobody@example.com") == []
    found, _ = await search(client, email="ann@example.com")
    assert {(c["type"], c["value"]) for c in found[0]["channels"]} == {
        ("email", "ann@example.com"), ("sms", "+380671234567")}
    assert "email" in fields_of(await bad_search(client, email="not-an-email"))
    assert "sms" in fields_of(await bad_search(client, sms="12345"))


async def test_search_pages_with_startindex_and_maxrows(client):
    """startindex (1-based) and maxrows page through all matches once; TotalCount is the whole count."""
    created = []
    for n in range(7):
        status, c = await call(client, "POST", "/api/v1/contact", {
            "lastName": "Page", "channels": [{"type": "email", "value": f"page{n}@example.com"}]})
        assert status == 200, c
        created.append(c["id"])
    await call(client, "POST", "/api/v1/contact", {"lastName": "Other", "channels": [
        {"type": "email", "value": "other@example.com"}]})

    seen, sizes = [], []
    for start in (1, 4, 7):
        found, total = await search(client, lastname="page", startindex=str(start), maxrows="3")
        assert total == 7
        sizes.append(len(found))
        seen += [c["id"] for c in found]
    assert sizes == [3, 3, 1]
    assert sorted(seen) == sorted(created) and len(set(seen)) == 7
    found, total = await search(client, lastname="page", startindex="8", maxrows="3")
    assert found == [] and total == 7
    _, total = await search(client)
    assert total == 8


async def test_search_by_external_id_alone(client):
    """externalCustomerId searches by itself; combined with another search parameter it is a 400 naming it."""
    status, c = await call(client, "POST", "/api/v1/contact", {
        "externalCustomerId": "S-1", "firstName": "Sam", "channels": [{"type": "email", "value": "sam@example.com"}]})
    assert status == 200, c
    await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "S-2", "firstName": "Sam"})
    found, total = await search(client, externalCustomerId="S-1")
    assert total == 1 and [x["id"] for x in found] == [c["id"]]
    assert found[0]["externalCustomerId"] == "S-1"
    _, total = await search(client, externalCustomerId="S-404")
    assert total == 0
    for other in ({"email": "sam@example.com"}, {"firstname": "Sam"}, {"sms": "+380671234567"},
                  {"lastname": "X"}):
        err = await bad_search(client, externalCustomerId="S-1", **other)
        assert "externalCustomerId" in fields_of(err), err
        assert next(iter(other)) in err["message"]


@pytest.mark.parametrize("params", [{"maxrows": "0"}, {"maxrows": "501"}, {"maxrows": "x"}, {"maxrows": "-1"},
                                    {"startindex": "0"}, {"startindex": "y"}])
async def test_search_rejects_bad_paging(client, params):
    """maxrows outside 1..500 and startindex below 1 or not a number are a 400 naming the parameter."""
    err = await bad_search(client, **params)
    assert fields_of(err) == list(params)


# --- validation: bad requests are named and change nothing -------------------------------------------------

PLACEHOLDERS = ["null", "undefined", "0", "-1", "anonymous", "NULL", " Anonymous ", "none", "guest"]
VID = "0b6c3c1e-7a4f-4e59-9a53-9b0a6f7d2c11"
BAD = [
    *[pytest.param("POST", "/api/v1/contact", {"externalCustomerId": p}, ["externalCustomerId"], id=f"ext-{p!r}")
      for p in PLACEHOLDERS],
    pytest.param("POST", "/api/v1/contact", {"externalCustomerId": 0}, ["externalCustomerId"], id="ext-int-0"),
    pytest.param("POST", "/api/v1/contact", {"externalCustomerId": -1}, ["externalCustomerId"], id="ext-int--1"),
    pytest.param("POST", "/api/v1/contact", {"externalCustomerId": ""}, ["externalCustomerId"], id="ext-empty"),
    *[pytest.param("POST", "/api/v1/contact", {"channels": [{"type": "email", "value": p}]},
                   ["channels[0].value"], id=f"email-{p!r}") for p in PLACEHOLDERS[:5]],
    pytest.param("POST", "/api/v1/contact/subscribe", {"contact": {"externalCustomerId": "undefined"}},
                 ["contact.externalCustomerId"], id="subscribe-ext-placeholder"),
    pytest.param("POST", "/api/v1/contact", {"channels": [{"type": "email", "value": "ann@@example.com"}]},
                 ["channels[0].value"], id="bad-email"),
    pytest.param("POST", "/api/v1/contact", {"externalCustomerId": "V-1", "channels": [
        {"type": "email", "value": "ok@example.com"}, {"type": "sms", "value": "12345"}]},
                 ["channels[1].value"], id="bad-phone"),
    pytest.param("POST", "/api/v1/contact", {"externalCustomerId": "V-1", "visitorIds": [VID, "not-a-visitor"]},
                 ["visitorIds[1]"], id="bad-visitor-id"),
    pytest.param("POST", "/api/v1/contact/subscribe", {"contact": {"externalCustomerId": "V-1",
                                                                   "visitorIds": ["nope", VID]}},
                 ["contact.visitorIds[0]"], id="subscribe-bad-visitor-id"),
    pytest.param("POST", "/api/v1/contact", {"externalCustomerId": "null", "firstName": "Fine",
                                             "channels": [{"type": "email", "value": "x@"},
                                                          {"type": "fax", "value": "1"}]},
                 ["channels[0].value", "channels[1].type"], id="every-bad-field-named"),
    pytest.param("PUT", "/api/v1/contact/{seed}", {"firstName": "Changed",
                                                   "channels": [{"type": "sms", "value": "+1 000"}]},
                 ["channels[0].value"], id="put-bad-phone"),
    pytest.param("POST", "/api/v1/contact", ["not", "an", "object"], ["body"], id="json-array"),
]


@pytest.fixture
async def seeded(client):
    """One existing contact, so that a bad request has something it could wrongly change."""
    status, seed = await call(client, "POST", "/api/v1/contact/subscribe", {
        "contact": {"externalCustomerId": "SEED-1", "firstName": "Seed",
                    "channels": [{"type": "email", "value": "seed@example.com"}]}, "groups": ["g"]})
    assert status == 200, seed
    return seed["id"]


@pytest.mark.parametrize(("method", "path", "body", "fields"), BAD)
async def test_bad_request_is_400_naming_each_field_and_stores_nothing(client, database_url, seeded, method, path,
                                                                      body, fields):
    """A placeholder, malformed identifier or bad visitor id is a 400 naming the field; nothing is stored."""
    before, counts = await snapshot(client, seeded), await table_counts(database_url)
    status, err = await call(client, method, path.format(seed=seeded), body)
    assert status == 400, err
    assert err["error"] and err["message"]
    assert fields_of(err) == fields
    assert await table_counts(database_url) == counts
    assert await snapshot(client, seeded) == before


@pytest.mark.parametrize(("data", "content_type", "status", "field"), [
    (b"{not json", "application/json", 400, "body"),
    (b"", "application/json", 400, "body"),
    (b'{"externalCustomerId": "C-1"}', "application/x-www-form-urlencoded", 415, None),
    (b"<contact/>", "application/xml", 415, None),
])
async def test_unreadable_body_is_rejected_and_stores_nothing(client, database_url, seeded, data, content_type,
                                                              status, field):
    """A body that is not JSON is a 400, another media type a 415; both JSON errors, nothing stored."""
    counts = await table_counts(database_url)
    for path in ("/api/v1/contact", "/api/v1/contact/subscribe", f"/api/v1/contact/{seeded}"):
        method = "PUT" if path.endswith(str(seeded)) else "POST"
        r = await client.request(method, path, data=data, headers={**auth(), "Content-Type": content_type})
        err = await r.json()
        assert r.status == status, (path, err)
        assert err["error"] and err["message"]
        if field:
            assert fields_of(err) == [field]
    assert await table_counts(database_url) == counts


@pytest.mark.parametrize("headers", [
    {},
    auth("wrong-key"),
    {"Authorization": "Bearer test-key"},
    {"Authorization": "Basic not-base64!"},
    {"Authorization": aiohttp.encode_basic_auth("test-key", "")},  # the key as the user name is not enough
])
async def test_api_needs_the_api_key(client, database_url, headers):
    """Without the API key as the Basic-auth password every contacts route answers a JSON 401, doing nothing."""
    counts = await table_counts(database_url)
    for method, path in (("POST", "/api/v1/contact"), ("POST", "/api/v1/contact/subscribe"),
                         ("GET", "/api/v1/contacts"), ("GET", "/api/v1/contact/1"),
                         ("PUT", "/api/v1/contact/1"), ("DELETE", "/api/v1/contact/1")):
        r = await client.request(method, path, json={"externalCustomerId": "C-1", "contact": {
            "externalCustomerId": "C-1"}}, headers=headers)
        err = await r.json()
        assert r.status == 401, (method, path, err)
        assert err["error"] and err["message"]
        assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert await table_counts(database_url) == counts


async def test_unknown_contact_is_404(client, database_url, seeded):
    """GET, PUT, DELETE, timeline and identity log of a contact that does not exist answer a JSON 404."""
    counts = await table_counts(database_url)
    missing = seeded + 1000
    for method, path, body in (("GET", f"/api/v1/contact/{missing}", None),
                               ("PUT", f"/api/v1/contact/{missing}", {"firstName": "Ghost"}),
                               ("PUT", f"/api/v1/contact/{missing}", {"externalCustomerId": "GHOST-1"}),
                               ("DELETE", f"/api/v1/contact/{missing}", None),
                               ("GET", f"/api/v1/contact/{missing}/events", None),
                               ("GET", f"/api/v1/contact/{missing}/identity-log", None)):
        status, err = await call(client, method, path, body)
        assert status == 404, (method, path, err)
        assert err["error"] and err["message"]
    assert await table_counts(database_url) == counts


# --- one external ID, one contact (DESIGN invariant 6) ----------------------------------------------------


async def test_concurrent_posts_of_one_new_external_id_make_one_contact(client, database_url):
    """Ten simultaneous first calls for the same new external ID all answer the one contact they created."""
    bodies = [{"externalCustomerId": "RACE-1", "channels": [{"type": "email", "value": f"r{n}@example.com"}]}
              for n in range(10)]
    results = await asyncio.gather(*(call(client, "POST", "/api/v1/contact", b) for b in bodies))
    assert all(status == 200 for status, _ in results), results
    ids = {body["id"] for _, body in results}
    assert len(ids) == 1, results
    assert sorted(body["status"] for _, body in results) == ["created"] + ["updated"] * 9
    found, total = await search(client, externalCustomerId="RACE-1")
    assert total == 1
    assert {c["value"] for c in found[0]["channels"]} == {f"r{n}@example.com" for n in range(10)}
    assert (await table_counts(database_url))["contacts"] == 1


async def test_concurrent_posts_of_one_new_email_make_one_contact(client, database_url):
    """Simultaneous ID-less calls with the same new email find each other instead of creating duplicates."""
    token = uuid.uuid4().hex
    results = await asyncio.gather(*(call(client, "POST", "/api/v1/contact", {
        "channels": [{"type": "email", "value": "same@example.com"}, {"type": "mobilepush", "value": f"{token}{n}"}]})
        for n in range(8)))
    assert all(status == 200 for status, _ in results), results
    assert len({body["id"] for _, body in results}) == 1, results
    assert (await table_counts(database_url))["contacts"] == 1


async def test_every_api_route_requires_an_api_key(client):
    """No /api route answers without a valid API key: each gives 401 JSON with WWW-Authenticate."""
    routes = {(r.method, r.resource.canonical) for r in client.app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/api/") and r.method != "HEAD"}
    assert len(routes) >= 10
    for method, path in sorted(routes):
        url = path.replace("{contact_id}", "1").replace("{vid}", "3f2504e0-4f89-41d3-9a0c-0305e82c3301")
        for headers in ({}, auth("wrong-key")):
            r = await client.request(method, url, headers=headers, json={})
            assert r.status == 401, (method, url, r.status)
            assert (await r.json())["error"] == "unauthorized"
            assert r.headers["WWW-Authenticate"].startswith("Basic")


async def test_a_body_over_one_mib_is_413_and_changes_nothing(client: Any, database_url: str) -> None:
    """Declared (Content-Length) or not (chunked), a contact body past 1 MiB is a 413 JSON error."""
    before = await table_counts(database_url)
    body = b'{"externalCustomerId": "C-BIG", "firstName": "' + b"x" * (1024 * 1024) + b'"}'

    async def chunks() -> Any:
        for start in range(0, len(body), 65536):
            yield body[start:start + 65536]

    for data in (body, chunks()):
        r = await client.post("/api/v1/contact", data=data,
                              headers={**auth(), "Content-Type": "application/json"})
        assert r.status == 413, await r.text()
        assert (await r.json())["error"] == "payload_too_large"
    assert await table_counts(database_url) == before
