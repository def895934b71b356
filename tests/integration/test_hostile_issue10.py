"""Hostile input against what issue 10 added (messages, groups, the console), found by probing a running
service: each case here was once a 500 or a 2xx that stored garbage."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest

from stitcher.app import init_app
from tests.conftest import auth
from tests.helpers import add_contact, call


@pytest.fixture
async def client(aiohttp_client: Any, settings: Any) -> Any:
    return await aiohttp_client(init_app(dataclasses.replace(settings, worker_enabled=False)))


@pytest.mark.parametrize("template", [
    "{{ 'a'|xmlattr }}",  # a filter given the wrong type raises AttributeError inside Jinja
    "{{ 'x'|dictsort }}",
    "{{ '\\ud800' }}",  # a string literal that renders a lone surrogate, which no database can store
    "{{ 'a\\x00b' }}",  # and one that renders a NUL
])
async def test_a_template_that_fails_at_render_fails_its_recipient_and_stores_nothing(client, template):
    """The message is accepted (it parses); the send answers 200 with that recipient's ERROR, no outbox row."""
    await add_contact(client, channels=[{"type": "email", "value": "ann@example.com"}])
    code, created = await call(client, "POST", "/api/v1/messages",
                               {"channel": "email", "name": "n", "subject": "s", "body": template})
    assert code == 200, created
    r = await client.post(f"/api/v1/message/{created['id']}/smartsend",
                          json={"recipients": [{"locator": "ann@example.com"}]}, headers=auth())
    answer = await r.json()
    assert r.status == 200, answer
    [result] = answer["results"]
    assert result["status"] == "ERROR" and "could not be rendered" in result["message"], result
    code, box = await call(client, "GET", f"/api/v1/message/{created['id']}/outbox")
    assert code == 200 and box["total"] == 0, box


@pytest.mark.parametrize("channel", [["email"], {"email": 1}])
async def test_a_channel_of_the_wrong_type_is_a_400_naming_it(client, channel):
    code, answer = await call(client, "POST", "/api/v1/messages", {"channel": channel, "name": "n", "body": "b"})
    assert code == 400 and [e["field"] for e in answer["errors"]] == ["channel"], answer


@pytest.mark.parametrize("path", ["/console/", "/api/v1/groups"])
async def test_a_non_ascii_api_key_is_a_401(client, path):
    """A password outside ASCII is simply a wrong key (hmac.compare_digest refuses non-ASCII str)."""
    r = await client.get(path, headers={"Authorization": "Basic " + base64.b64encode("x:é".encode()).decode()})
    assert r.status == 401, await r.text()


@pytest.mark.parametrize(("raw", "content_type"), [
    (b"q=\xff\xfe", "application/x-www-form-urlencoded"),  # not UTF-8
    (b"q=ann1", "application/x-www-form-urlencoded; charset=bogus"),  # no such charset
])
async def test_an_unreadable_console_search_form_is_a_400(client, raw, content_type):
    r = await client.post("/console/search", data=raw, headers={**auth(), "Content-Type": content_type})
    assert r.status == 400, await r.text()


async def test_placeholders_are_not_autoescaped_and_e_escapes_them(client):
    """As the platform: jsonParam HTML goes into an HTML body as it is; ``|e`` escapes a visitor-typed name."""
    await add_contact(client, firstName="<i>Ann</i>", channels=[{"type": "email", "value": "ann@example.com"}])
    code, created = await call(client, "POST", "/api/v1/messages", {
        "channel": "email", "name": "n", "subject": "s", "body": "{{ block }}|{{ block|safe }}|{{ firstName|e }}"})
    assert code == 200, created
    r = await client.post(f"/api/v1/message/{created['id']}/smartsend", headers=auth(),
                          json={"recipients": [{"locator": "ann@example.com", "jsonParam": {"block": "<b>x</b>"}}]})
    assert r.status == 200 and (await r.json())["results"][0]["status"] == "OK"
    code, box = await call(client, "GET", f"/api/v1/message/{created['id']}/outbox")
    assert box["outbox"][0]["body"] == "<b>x</b>|<b>x</b>|&lt;i&gt;Ann&lt;/i&gt;", box
