"""A send's languageCode, tags and externalRequestId (issue 10, as the platform): stored on each outbox row,
read back from the outbox (and by ``?externalRequestId=``), ``languageCode`` rendered into the template."""

from __future__ import annotations

import pytest

from tests.helpers import add_contact, call
from tests.integration.test_messages import client, create, outbox, send

__all__ = ["client"]


async def test_language_code_and_external_request_id_are_stored_rendered_and_read_back(client):
    """A recipient's languageCode is the template's ``languageCode`` (else the contact's) and is stored; the
    request's externalRequestId is on every send and finds them again."""
    ann = await add_contact(client, firstName="Ann", languageCode="en",
                            channels=[{"type": "email", "value": "ann@example.com"}])
    bob = await add_contact(client, firstName="Bob", languageCode="de",
                            channels=[{"type": "email", "value": "bob@example.com"}])
    mid = await create(client, body="{% if languageCode == 'uk' %}Привіт{% else %}Hello{% endif %} {{ firstName }}")
    answer = await send(client, mid, {"contactId": ann, "languageCode": "uk"}, {"contactId": bob},
                        externalRequestId="order-77")
    assert [r["status"] for r in answer["results"]] == ["OK", "OK"]
    await send(client, mid, {"contactId": ann}, externalRequestId="order-78")
    rows = {(o["contactId"], o["externalRequestId"]): o
            for o in (await outbox(client, f"/api/v1/message/{mid}/outbox"))["outbox"]}
    assert rows[(ann, "order-77")]["body"] == "Привіт Ann" and rows[(ann, "order-77")]["languageCode"] == "uk"
    assert rows[(bob, "order-77")]["body"] == "Hello Bob" and rows[(bob, "order-77")]["languageCode"] == "de"
    assert rows[(ann, "order-78")]["languageCode"] == "en" and rows[(ann, "order-78")]["tags"] == []
    by_request = await outbox(client, f"/api/v1/message/{mid}/outbox", externalRequestId="order-77")
    assert by_request["total"] == 2 and {o["contactId"] for o in by_request["outbox"]} == {ann, bob}
    mine = await outbox(client, f"/api/v1/contact/{ann}/messages", externalRequestId="order-78")
    assert mine["total"] == 1 and mine["outbox"][0]["externalRequestId"] == "order-78"
    assert (await outbox(client, f"/api/v1/contact/{ann}/messages", externalRequestId="nope"))["total"] == 0


async def test_one_off_email_tags_and_external_request_id_are_stored(client):
    ann = await add_contact(client, channels=[{"type": "email", "value": "ann@example.com"}])
    code, answer = await call(client, "POST", "/api/v1/message/email", {
        "from": "shop@example.com", "subject": "S", "htmlText": "<p>x</p>", "emails": ["ann@example.com"],
        "tags": ["promo", "spring"], "externalRequestId": "mail-1"})
    assert code == 200 and answer["results"][0]["status"] == "OK", answer
    [row] = (await outbox(client, f"/api/v1/contact/{ann}/messages"))["outbox"]
    assert row["tags"] == ["promo", "spring"] and row["externalRequestId"] == "mail-1"
    assert row["languageCode"] is None


@pytest.mark.parametrize("extra", [
    {"externalRequestId": 5}, {"externalRequestId": "x" * 257}, {"externalRequestId": "a\nb"},
    {"externalRequestId": "a\x00b"}, {"externalRequestId": ["a"]},
])
async def test_a_bad_external_request_id_is_a_400_naming_it(client, extra):
    mid = await create(client)
    answer = await send(client, mid, {"locator": "a@example.com"}, status=400, **extra)
    assert [e["field"] for e in answer["errors"]] == ["externalRequestId"], answer
    code, body = await call(client, "POST", "/api/v1/message/email", {
        "from": "shop@example.com", "subject": "S", "htmlText": "x", "emails": ["a@example.com"], **extra})
    assert code == 400 and [e["field"] for e in body["errors"]] == ["externalRequestId"], body
    assert (await outbox(client, f"/api/v1/message/{mid}/outbox"))["total"] == 0


@pytest.mark.parametrize("tags", ["promo", [1], ["x" * 257], ["a\x00"], ["t"] * 101, {"a": 1}])
async def test_bad_tags_are_a_400_naming_them(client, tags):
    code, body = await call(client, "POST", "/api/v1/message/email", {
        "from": "shop@example.com", "subject": "S", "htmlText": "x", "emails": ["a@example.com"], "tags": tags})
    assert code == 400 and [e["field"].partition("[")[0] for e in body["errors"]] == ["tags"], body


@pytest.mark.parametrize("language", [5, "x" * 17, "en us", "<b>", ["en"], "ua\n"])
async def test_a_bad_language_code_fails_its_recipient_naming_it(client, language):
    """As every bad recipient field: that recipient fails (``message`` names the field), the others are sent."""
    await add_contact(client, channels=[{"type": "email", "value": "ann@example.com"}])
    mid = await create(client)
    bad, good = (await send(client, mid, {"locator": "ann@example.com", "languageCode": language},
                            {"locator": "ann@example.com", "languageCode": "pt-BR"}))["results"]
    assert bad["status"] == "ERROR" and "recipients[0].languageCode" in bad["message"], bad
    assert good["status"] == "OK"


@pytest.mark.parametrize("value", ["", "x" * 257, "a\x01"])
async def test_a_bad_external_request_id_filter_is_a_400(client, value):
    mid = await create(client)
    code, body = await call(client, "GET", f"/api/v1/message/{mid}/outbox", params={"externalRequestId": value})
    assert code == 400 and body["errors"][0]["field"] == "externalRequestId", body
