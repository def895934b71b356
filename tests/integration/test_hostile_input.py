"""Hostile input on every public body and parameter: deep nesting, NUL, duplicate keys, numbers past 64 bits,
oversized identifiers and request ids — always a 4xx JSON naming the field (SPEC §3), never a 500, and
nothing already stored is lost. Runs on both backends (PostgreSQL refuses what SQLite silently keeps)."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import random
import uuid
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from stitcher.app import init_app
from tests.conftest import auth
from tests.helpers import call, page_views, sql_scalar
from tracker.connection import ParserLog
from tracker.limits import MAX_JSON_DEPTH, MAX_REQUEST_ID


@pytest.fixture
async def client(aiohttp_client: Any, settings: Any) -> Any:
    """The whole service without its drain worker: nothing here needs it, and most of these tests end before
    its first SQL query would, which on SQLite can outlive the test's event loop (a known shutdown race)."""
    return await aiohttp_client(init_app(dataclasses.replace(settings, worker_enabled=False)))


TOO_DEEP = 300  # past orjson's own encoder limit (~255), which used to surface as a 500


def nested(levels: int, leaf: Any = "x") -> Any:
    """``levels`` nested objects around ``leaf``: ``nested(2) == {"a": {"a": "x"}}``."""
    value = leaf
    for _ in range(levels):
        value = {"a": value}
    return value


DEEP = "@deep"  # stands for a value nested TOO_DEEP levels, which orjson itself cannot encode


def dumps(body: Any) -> bytes:
    """``body`` as JSON, each ``DEEP`` string replaced by objects nested ``TOO_DEEP`` levels."""
    return orjson.dumps(body).replace(b'"@deep"', b'{"a":' * TOO_DEEP + b'"x"' + b"}" * TOO_DEEP)


async def raw_call(client: Any, method: str, path: str, raw: bytes, **kw: Any) -> tuple[int, Any]:
    """An authenticated call with a body sent byte for byte (duplicate keys, NaN...)."""
    r = await client.request(method, path, data=raw, headers={**auth(), "Content-Type": "application/json"}, **kw)
    return r.status, await r.json()


def assert_bad(status: int, answer: Any, field: str) -> None:
    """A 400 in the documented error shape that names ``field``."""
    assert status == 400, answer
    assert answer["error"] and answer["message"]
    assert field in [e["field"] for e in answer["errors"]], answer


def ext() -> str:
    return f"H-{uuid.uuid4().hex[:10]}"


async def post_beacon(client: Any, body: Any, pixel: bool = False) -> Any:
    raw = dumps(body) if not isinstance(body, bytes) else body
    client.session.cookie_jar.clear()
    if pixel:
        return await client.get("/t.gif", params={"d": base64.urlsafe_b64encode(raw).decode().rstrip("=")})
    return await client.post("/t", data=raw, headers={"Content-Type": "text/plain"})


async def rejected_reasons(client: Any) -> dict[str, str]:
    status, body = await call(client, "GET", "/api/v1/tracker/rejected")
    assert status == 200
    return {r["event_id"]: r["reason"] for r in body["rejected"]}


async def history_ids(client: Any, vid: str) -> list[str]:
    status, history = await call(client, "GET", f"/api/v1/visitor/{vid}/events")
    return [e["id"] for e in history["events"]] if status == 200 else []


# --- request ids (the edge's limit is the column's) ------------------------------------------------------


async def test_the_longest_accepted_request_id_reaches_the_identity_log(client: Any) -> None:
    """An X-Request-Id of the longest length the edge accepts is echoed and stored with every identity change
    (add/update, delete), not a failed write."""
    rid = "r" * MAX_REQUEST_ID
    headers = {**auth(), "X-Request-Id": rid}
    x = ext()
    r = await client.post("/api/v1/contact", json={"externalCustomerId": x}, headers=headers)
    assert r.status == 200, await r.text()
    assert r.headers["X-Request-Id"] == rid
    contact_id = (await r.json())["id"]
    r = await client.post("/api/v1/contact", json={"externalCustomerId": x, "visitorIds": [str(uuid.uuid4())]},
                          headers=headers)
    assert r.status == 200 and (await r.json())["status"] == "updated", await r.text()
    r = await client.delete(f"/api/v1/contact/{contact_id}", headers=headers)
    assert r.status == 200, await r.text()
    _, log = await call(client, "GET", f"/api/v1/contact/{contact_id}/identity-log")
    assert [(e["action"], e["requestId"]) for e in log["entries"]] == [
        ("created", rid), ("linked_visitor", rid), ("deleted", rid)]
    r = await client.get("/healthz", headers={"X-Request-Id": rid + "r"})
    assert r.headers["X-Request-Id"] != rid + "r"


# --- timeline cursor -------------------------------------------------------------------------------------


async def test_a_cursor_past_64_bits_is_a_400(client: Any) -> None:
    """An ``after`` cursor whose time or row does not fit in signed 64 bits is a 400 naming ``after``."""
    _, first = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": ext()})
    path = f"/api/v1/contact/{first['id']}/events"
    for after in ("99999999999999999999999.1", "1.99999999999999999999999", "9223372036854775808.1"):
        status, answer = await call(client, "GET", path, params={"after": after})
        assert_bad(status, answer, "after")
    status, page = await call(client, "GET", path, params={"after": "9223372036854775807.9223372036854775807"})
    assert status == 200 and page["events"] == []


# --- identifier sizes ------------------------------------------------------------------------------------


async def test_identifiers_are_bounded_in_utf8_bytes(client: Any) -> None:
    """A push token of 4-byte characters is bounded in bytes (the B-tree index row limit): 1024 bytes are
    stored, more is a 400 naming the field; an external ID of 256 4-byte characters is stored."""
    rng = random.Random(5)  # varied characters: PostgreSQL compresses a repeated one below its index row limit
    too_long = {"type": "mobilepush", "value": "".join(chr(rng.randrange(0x20000, 0x2A6DF)) for _ in range(1024))}
    status, answer = await call(client, "POST", "/api/v1/contact", {"channels": [too_long]})
    assert_bad(status, answer, "channels[0].value")
    status, answer = await call(client, "POST", "/api/v1/contact/subscribe", {"contact": {"channels": [too_long]}})
    assert_bad(status, answer, "contact.channels[0].value")
    token = "\U0001F600" * 256  # 1024 bytes
    status, answer = await call(client, "POST", "/api/v1/contact", {"channels": [{"type": "webpush", "value": token}]})
    assert status == 200, answer
    external_id = "\U0001F600" * 256
    status, answer = await call(client, "POST", "/api/v1/contact/subscribe", {
        "contact": {"externalCustomerId": external_id}, "groups": ["\U0001F600" * 256]})
    assert status == 200, answer
    status, found = await call(client, "GET", "/api/v1/contacts", params={"externalCustomerId": external_id})
    assert [c["id"] for c in found] == [answer["id"]]


# --- beacon: nesting and duplicate keys ------------------------------------------------------------------


@pytest.mark.parametrize("pixel", [False, True])
async def test_beacon_props_nested_too_deep_reject_that_event_only(client: Any, pixel: bool) -> None:
    """An event whose props nest past the limit is rejected with its reason; the batch's other events land."""
    vid = str(uuid.uuid4())
    good = page_views(1)
    deep = {"id": f"deep-{uuid.uuid4().hex[:8]}", "type": "e", "props": DEEP}
    also_deep = {"id": f"deep2-{uuid.uuid4().hex[:8]}", "type": "e", "props": nested(MAX_JSON_DEPTH + 1)}
    r = await post_beacon(client, {"vid": vid, "events": [*good, deep, also_deep]}, pixel)
    assert r.status in (200, 204), await r.text()
    assert await history_ids(client, vid) == [good[0]["id"]]
    reasons = await rejected_reasons(client)
    assert "nested deeper than" in reasons[deep["id"]] and reasons[deep["id"]].startswith("props")
    assert "nested deeper than" in reasons[also_deep["id"]]


async def test_beacon_props_at_the_nesting_limit_are_stored(client: Any) -> None:
    """Props nesting exactly as deep as the documented limit are kept as sent."""
    vid = str(uuid.uuid4())
    ev = {"id": f"ok-{uuid.uuid4().hex[:8]}", "type": "e", "props": nested(MAX_JSON_DEPTH)}
    r = await post_beacon(client, {"vid": vid, "events": [ev]})
    assert r.status == 204, await r.text()
    assert await history_ids(client, vid) == [ev["id"]]


@pytest.mark.parametrize("pixel", [False, True])
@pytest.mark.parametrize("shape", ["events_list", "event_field"])
async def test_beacon_body_nested_too_deep_is_a_400(client: Any, pixel: bool, shape: str) -> None:
    """A body whose own structure (the events list, an event's fields) nests past the limit is malformed:
    400 naming the event, and nothing of it is stored."""
    vid = str(uuid.uuid4())
    good = page_views(1)
    bad: Any = [DEEP] if shape == "events_list" else {"id": "x1", "type": "e", "url": DEEP}
    r = await post_beacon(client, {"vid": vid, "events": [*good, bad]}, pixel)
    assert_bad(r.status, await r.json(), "events[1]")
    assert await history_ids(client, vid) == []


async def test_beacon_duplicate_keys_keep_the_last_value(client: Any) -> None:
    """The beacon (documented choice) keeps the hot path's parser: a repeated key counts with its last value."""
    vid = str(uuid.uuid4())
    raw = b'{"vid":"%s","events":[{"id":"d-1","type":"first","type":"second","props":{"k":1,"k":2}}]}' % vid.encode()
    r = await post_beacon(client, raw)
    assert r.status == 204, await r.text()
    _, history = await call(client, "GET", f"/api/v1/visitor/{vid}/events")
    [stored] = history["events"]
    assert stored["type"] == "second" and stored["props"] == {"k": 2}


# --- contacts API: nesting, NUL, duplicate keys, numbers, types (one strict reader) ----------------------


async def test_contact_fields_nested_too_deep_are_a_400(client: Any) -> None:
    """A contact whose address or fields nest past the limit is a 400 naming the field; nothing is stored."""
    cases = [
        ("/api/v1/contact", {"externalCustomerId": ext(), "address": DEEP}, "address"),
        ("/api/v1/contact", {"externalCustomerId": ext(), "fields": [{"id": 1, "value": DEEP}]}, "fields[0].value"),
        ("/api/v1/contact", {"externalCustomerId": ext(), "address": nested(MAX_JSON_DEPTH)}, "address"),
        ("/api/v1/contact/subscribe", {"contact": {"externalCustomerId": ext(), "address": DEEP}}, "contact.address"),
        ("/api/v1/contact/subscribe", {"contact": {"externalCustomerId": ext(), "fields": [DEEP]}}, "contact.fields"),
    ]
    for path, body, field in cases:
        status, answer = await raw_call(client, "POST", path, dumps(body))
        assert status == 400, (path, answer)
        assert any(e["field"].startswith(field) for e in answer["errors"]), answer
        assert "nested deeper than" in answer["message"]
    status, found = await call(client, "GET", "/api/v1/contacts", params={"maxrows": "500"})
    assert status == 200 and found == []


async def test_contact_nested_at_the_limit_is_stored(client: Any) -> None:
    """A body nesting exactly as deep as the limit is accepted and read back as sent."""
    address = nested(MAX_JSON_DEPTH - 1)  # the body itself is the first level
    status, answer = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": ext(), "address": address})
    assert status == 200, answer
    status, contact = await call(client, "GET", f"/api/v1/contact/{answer['id']}")
    assert contact["address"] == address


async def test_a_body_too_deep_for_the_parser_is_a_400(client: Any) -> None:
    """Nesting deep enough to exhaust the JSON parser's recursion is a 400 naming the body, not a 500."""
    depth = 200_000
    status, answer = await raw_call(client, "POST", "/api/v1/contact", b"[" * depth + b"]" * depth)
    assert_bad(status, answer, "body")
    status, found = await call(client, "GET", "/api/v1/contacts", params={"maxrows": "500"})
    assert status == 200 and found == []


async def test_nul_in_any_contact_text_is_a_400_naming_where(client: Any) -> None:
    """A NUL character anywhere in a contact body (names, address keys and values, fields, device, group
    names, formType) is a 400 naming its place; the contact stored earlier is unchanged."""
    x = ext()
    status, first = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": x, "firstName": "Ann"})
    assert status == 200
    email = {"type": "email", "value": f"{uuid.uuid4().hex[:8]}@example.com"}
    contact_cases = [
        ({"firstName": "a\x00b"}, "firstName"),
        ({"lastName": "\x00"}, "lastName"),
        ({"languageCode": "u\x00k"}, "languageCode"),
        ({"address": {"street": "Main\x00"}}, "address.street"),
        ({"address": {"lines": ["ok", "b\x00d"]}}, "address.lines[1]"),
        ({"address": {"str\x00eet": "Main"}}, "address"),
        ({"fields": [{"id": 1, "value": "v\x00"}]}, "fields[0].value"),
        ({"channels": [{**email, "device": "iPhone\x00"}]}, "channels[0].device"),
    ]
    for extra, field in contact_cases:
        status, answer = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": x, **extra})
        assert_bad(status, answer, field)
        assert "NUL" in answer["message"]
        status, answer = await call(client, "POST", "/api/v1/contact/subscribe",
                                    {"contact": {"externalCustomerId": x, **extra}})
        assert_bad(status, answer, f"contact.{field}")
    for extra, field in (({"groups": ["news\x00"]}, "groups[0]"), ({"formType": "foot\x00er"}, "formType")):
        status, answer = await call(client, "POST", "/api/v1/contact/subscribe",
                                    {"contact": {"externalCustomerId": x}, **extra})
        assert_bad(status, answer, field)
    status, contact = await call(client, "GET", f"/api/v1/contact/{first['id']}")
    assert contact["firstName"] == "Ann" and contact["address"] is None and contact["groups"] == []


async def test_nul_in_query_parameters_is_a_400_naming_the_parameter(client: Any) -> None:
    """Search and delete parameters holding a NUL character are a 400 naming the parameter."""
    status, first = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": ext()})
    assert status == 200
    for name in ("firstname", "lastname", "email", "sms", "externalCustomerId"):
        status, answer = await call(client, "GET", "/api/v1/contacts", params={name: "a\x00b"})
        assert_bad(status, answer, name)
    status, answer = await call(client, "DELETE", "/api/v1/contact", params={"externalCustomerId": "a\x00b"})
    assert_bad(status, answer, "externalCustomerId")
    status, answer = await call(client, "GET", f"/api/v1/contact/{first['id']}/events", params={"after": "1\x00.1"})
    assert_bad(status, answer, "after")
    status, _ = await call(client, "GET", f"/api/v1/contact/{first['id']}")
    assert status == 200


async def test_duplicate_keys_in_an_api_body_are_a_400_naming_the_key(client: Any) -> None:
    """A JSON body repeating a key is a 400 naming the key and where it is; nothing is created."""
    cases = [
        ("/api/v1/contact", b'{"externalCustomerId":"A-1","externalCustomerId":"B-1"}', "externalCustomerId"),
        ("/api/v1/contact/subscribe", b'{"contact":{"externalCustomerId":"A-1","externalCustomerId":"B-1"}}',
         "contact.externalCustomerId"),
        ("/api/v1/contact", b'{"externalCustomerId":"A-1","address":{"c":1,"c":2}}', "address.c"),
        ("/api/v1/contact/subscribe", b'{"contact":{"externalCustomerId":"A-1"},"groups":[],"groups":["g"]}',
         "groups"),
    ]
    for path, raw, field in cases:
        status, answer = await raw_call(client, "POST", path, raw)
        assert_bad(status, answer, field)
        assert "more than once" in answer["message"]
    for external_id in ("A-1", "B-1"):
        status, found = await call(client, "GET", "/api/v1/contacts", params={"externalCustomerId": external_id})
        assert found == []


async def test_non_standard_numbers_in_an_api_body_are_a_400(client: Any) -> None:
    """NaN, Infinity, 1e400 and integers past 64 bits are a 400 naming the field, never a 500 on the way out."""
    cases = [
        (b'{"externalCustomerId":"N-1","fields":[{"id":1,"value":NaN}]}', "fields[0].value"),
        (b'{"externalCustomerId":"N-1","fields":[{"id":1,"value":-Infinity}]}', "fields[0].value"),
        (b'{"externalCustomerId":"N-1","fields":[{"id":1,"value":1e400}]}', "fields[0].value"),
        (b'{"externalCustomerId":"N-1","address":{"zip":%d}}' % 2**70, "address.zip"),
        (b'{"externalCustomerId":%d}' % 2**70, "externalCustomerId"),
        (b'{"externalCustomerId":"N-1","fields":[{"id":%s,"value":1}]}' % (b"9" * 5000), "fields[0].id"),
    ]
    for raw, field in cases:
        status, answer = await raw_call(client, "POST", "/api/v1/contact", raw)
        assert_bad(status, answer, field)
    status, answer = await raw_call(client, "POST", "/api/v1/contact",
                                    b'{"externalCustomerId":"N-1","fields":[{"id":1,"value":-9223372036854775808}]}')
    assert status == 200, answer


async def test_strings_that_are_not_unicode_text_are_a_400(client: Any) -> None:
    """A lone surrogate escape or bytes that are not UTF-8 are a 400 (they cannot be stored or answered)."""
    status, answer = await raw_call(client, "POST", "/api/v1/contact",
                                    b'{"externalCustomerId":"S-1","firstName":"\\ud800"}')
    assert_bad(status, answer, "firstName")
    status, answer = await raw_call(client, "POST", "/api/v1/contact", b'{"externalCustomerId":"S-\xff"}')
    assert_bad(status, answer, "body")


async def test_wrong_types_in_contact_bodies_are_a_400(client: Any) -> None:
    """Every field of the wrong JSON type is a 400 naming it."""
    x = ext()
    cases = [
        ({"externalCustomerId": x, "firstName": 1}, "firstName"),
        ({"externalCustomerId": x, "address": []}, "address"),
        ({"externalCustomerId": x, "fields": {"a": 1}}, "fields"),
        ({"externalCustomerId": x, "channels": "email"}, "channels"),  # (a single object is a list of one)
        ({"externalCustomerId": x, "channels": [{"type": "email", "value": 1}]}, "channels[0].value"),
        ({"externalCustomerId": x, "visitorIds": "abc"}, "visitorIds"),
        ({"externalCustomerId": [x]}, "externalCustomerId"),
        ({"externalCustomerId": 1.5}, "externalCustomerId"),
        ({"externalCustomerId": True}, "externalCustomerId"),
    ]
    for body, field in cases:
        status, answer = await call(client, "POST", "/api/v1/contact", body)
        assert_bad(status, answer, field)
    for body, field in (({"contact": x}, "contact"), ({"contact": {"externalCustomerId": x}, "groups": "g"}, "groups"),
                        ({"contact": {"externalCustomerId": x}, "groups": [1]}, "groups[0]"),
                        ({"contact": {"externalCustomerId": x}, "formType": 1}, "formType")):
        status, answer = await call(client, "POST", "/api/v1/contact/subscribe", body)
        assert_bad(status, answer, field)


async def test_client_shapes_taken_apart_are_a_400_or_ignored_never_a_500(client: Any) -> None:
    """The shapes read for platform clients (group objects, device objects, single objects, messenger
    channels) under hostile values: a 400 naming the place or an entry under ``ignored``, nothing stored
    from a refused body."""
    x = ext()
    refused = [
        ({"externalCustomerId": x, "groups": [{"name": {"a": 1}}]}, "groups[0].name"),
        ({"externalCustomerId": x, "groups": {"name": "n" * 257}}, "groups[0].name"),
        ({"externalCustomerId": x, "groups": [f"g{i}" for i in range(101)]}, "groups"),
        ({"externalCustomerId": x, "groups": [[["nested"]]]}, "groups[0]"),
        ({"externalCustomerId": x, "channels": {"type": "viber", "value": "v" * 1025}}, "channels[0].value"),
        ({"externalCustomerId": x, "channels": {"type": "telegram", "value": ["1"]}}, "channels[0].value"),
        ({"externalCustomerId": x, "channels": {"type": ["email"], "value": "a@b.io"}}, "channels[0].type"),
        ({"externalCustomerId": x, "channels": [{"type": "mobilepush", "value": "t", "device": {"os": "a\x00"}}]},
         "channels[0].device.os"),
        ({"externalCustomerId": x, "channels": [{"type": "mobilepush", "value": "t", "device": DEEP}]},
         "channels[0].device"),
    ]
    for body, field in refused:
        status, answer = await raw_call(client, "POST", "/api/v1/contact/", dumps(body))
        assert status == 400 and answer["status"] == 400, answer
        assert any(e["field"].startswith(field) for e in answer["errors"]), (field, answer)  # deep: the path
    status, answer = await call(client, "GET", "/api/v1/contacts", params={"externalCustomerId": x})
    assert status == 200 and answer == []
    status, answer = await call(client, "POST", "/api/v1/contact/", {"externalCustomerId": x, "channels": [
        {"type": "telegram", "value": 123456789},
        {"type": "mobilepush", "value": "tok", "device": [1, 2]},
        {"type": "webpush", "value": "wp", "device": {"k": "\U0001F600" * 4100}}]})
    assert status == 200, answer
    assert answer["ignored"] == [
        {"field": "channels[1].device", "reason": "neither a string nor an object"},
        {"field": "channels[2].device", "reason": "longer than 4096 characters as JSON"}]
    status, contact = await call(client, "GET", f"/api/v1/contact/{answer['id']}")
    assert {"type": "telegram", "value": "123456789"} in contact["channels"]


async def test_account_and_version_ignore_hostile_query_and_body(client: Any) -> None:
    """account/info and version read no input: junk in the query or the body changes nothing; without a key
    they are a 401 whose body carries the status."""
    for path in ("/api/v1/account/info", "/api/v1/version/"):
        r = await client.get(path, params={"x": "y" * 5000}, data=b"\x00" * 100, headers=auth())
        assert r.status == 200, await r.text()
        r = await client.get(path)
        assert r.status == 401 and (await r.json())["status"] == 401


async def test_digit_strings_past_4300_digits_are_a_400_not_a_500(client: Any) -> None:
    """A contact id of 5,000 digits (in the body, quoted, or in the path) made int() raise: a 500."""
    digits = "9" * 5000
    for body in ({"contactId": digits, "externalCustomerId": ext()}, {"id": digits, "externalCustomerId": ext()}):
        status, answer = await call(client, "POST", "/api/v1/contact", body)
        assert status == 400 and answer["status"] == 400, answer
    for path in (f"/api/v1/contact/{digits}", f"/api/v1/contact/{digits}/orders",
                 f"/api/v1/contact/{digits}/events"):
        status, answer = await call(client, "GET", path)
        assert status in (400, 404) and answer["status"] == status, (path[:30], answer)


async def test_ids_of_10000_characters_in_a_path_or_query_get_a_json_4xx(client: Any) -> None:
    """aiohttp's parser refused a request line past 8,190 bytes with a plain-text 400, before the service's
    JSON errors: a 10,000-character id in a path or query now reaches the handlers."""
    for path in (f"/api/v1/contact/{'9' * 10_000}/orders", f"/api/v1/importstatus/{'x' * 10_000}",
                 f"/api/v1/contact/{'é' * 10_000}", f"/api/v1/contacts?externalCustomerId={'C' * 10_000}",
                 f"/api/v1/events/held?after={'1' * 10_000}"):
        r = await client.get(path, headers=auth())
        assert 400 <= r.status < 500 or (r.status == 200 and "contacts?" in path), (path[:40], r.status)
        assert (await r.json())["status"] == r.status


async def test_a_request_line_the_parser_refuses_logs_no_email(client: Any, caplog: Any) -> None:
    """Past 64 KiB the parser still refuses the line itself (400), and its log names the error only: it used
    to log the start of the line — here an email in the query — with a traceback."""
    secret = "parser.secret@example.com"
    with capture_logs() as logs:
        r = await client.get(f"/api/v1/contacts?email={secret}&x={'y' * 70_000}", headers=auth())
        assert r.status == 400
        r = await client.get("/api/v1/version", headers={**auth(), "X-Email": secret + "z" * 9_000})
        assert r.status == 400
    assert secret not in repr(logs) and secret not in caplog.text
    assert [e["error"] for e in logs if e["event"] == "request refused by the HTTP parser"] == ["LineTooLong"] * 2
    r = await client.get("/api/v1/version", headers=auth())
    assert r.status == 200
    with capture_logs() as logs:  # a fault of the service itself outside the handlers keeps its traceback
        ParserLog().exception("Unhandled exception", exc_info=RuntimeError("a bug"))
    assert [(e["event"], e["log_level"], type(e["exc_info"])) for e in logs] == [
        ("Unhandled exception", "error", RuntimeError)]


async def test_compressed_bodies_are_a_415_on_every_endpoint(client: Any, database_url: str) -> None:
    """aiohttp decoded a Content-Encoding before the handler: a gzip body was cut at its compressed length
    (a 400 "not valid JSON" for a valid body, and a gzip bomb decompressed as far as that), a corrupt one
    answered 500, a brotli one aiohttp's own plain-text 400. No client of the service compresses bodies:
    every encoding but ``identity`` is a JSON 415 naming it, and nothing is stored."""
    event = orjson.dumps({"eventTypeKey": "gz", "keyValue": "gz@example.com"})
    bomb = gzip.compress(b'{"dedupeOn": "email", "contacts": [' + b" " * 20_000_000 + b"]}")
    for path, body in (("/api/v2/event", gzip.compress(event)), ("/api/v1/contacts", bomb),
                       ("/api/v1/contact", gzip.compress(orjson.dumps({"externalCustomerId": ext()}))),
                       ("/api/v1/orders", b"not gzip at all"), ("/t", gzip.compress(b'{"events": []}'))):
        for encoding in ("gzip", "deflate", "br", "x-custom"):
            r = await client.post(path, data=body, headers={**auth(), "Content-Type": "application/json",
                                                            "Content-Encoding": encoding})
            assert r.status == 415, (path, encoding, r.status, await r.text())
            answer = await r.json()
            assert answer["status"] == 415 and encoding in answer["message"]
    r = await client.post("/api/v2/event", data=event, headers={**auth(), "Content-Type": "application/json",
                                                                 "Content-Encoding": "identity"})
    assert r.status == 200, await r.text()
    for table in ("contacts", "imports", "orders"):
        assert await sql_scalar(database_url, f"SELECT count(*) FROM {table}") == 0, table


async def test_an_authorization_header_that_is_not_ascii_is_a_401(client: Any) -> None:
    """``Authorization: Basic é`` made base64 raise a ValueError (not binascii.Error): a 500 on every /api path."""
    for header in ("Basic é", "Basic \u00ff\u00fe", "basic 😀", "Basic " + base64.b64encode(b"\xff:\xfe").decode()):
        for path in ("/api/v1/version", "/api/v1/events/held", "/api/v1/importstatus/x"):
            r = await client.get(path, headers={"Authorization": header})
            assert r.status == 401, (header, path, r.status)
            assert (await r.json())["status"] == 401
