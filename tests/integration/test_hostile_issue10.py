"""Hostile input against what issue 10 added (messages, groups, the console), found by probing a running
service: each case here was once a 500 or a 2xx that stored garbage."""

from __future__ import annotations

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
