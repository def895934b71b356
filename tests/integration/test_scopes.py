"""Who may do what (issue 12): each API key holds scopes; a route needs the one ``tracker.scopes`` names.

A key without the scope is a 403 naming it, a missing or unknown key a 401, and neither changes anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import MultiDict

from tests.conftest import API_KEY, auth
from tests.integration.test_contacts_api import table_counts
from tracker.scopes import ROUTE_SCOPES, Scope, is_guarded, table_key
from tracker.settings import Settings

HASHED = "hashed-Key-7f3a"  # configured only as its SHA-256, uppercase hex
KEYS = {
    "track": "track-key:track",
    "contacts": "contacts-key:contacts",
    "messages": "messages-key:messages",
    "admin": "admin-key:admin",
    "contacts+messages": f"sha256:{hashlib.sha256(HASHED.encode()).hexdigest().upper()}:contacts+messages",
}
PRESENTED = {"track": "track-key", "contacts": "contacts-key", "messages": "messages-key", "admin": "admin-key",
             "contacts+messages": HASHED}
HELD = {name: frozenset(Scope(s) for s in name.split("+")) for name in KEYS}
VID = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
PATH_VALUES = {"{contact_id}": "1", "{vid}": VID, "{session_id}": "1", "{group_id}": "1", "{message_id}": "1",
               "{name}": "console.css"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The whole service with a full-access plain key (the old meaning) and one key per scope set."""
    return dataclasses.replace(settings, api_keys=(API_KEY, *KEYS.values()), worker_enabled=False)


def _url(path: str) -> str:
    for name, value in PATH_VALUES.items():
        path = path.replace(name, value)
    return path


def _routes(client: Any) -> set[tuple[str, str]]:
    return {(r.method, r.resource.canonical) for r in client.app.router.routes()
            if r.resource is not None and is_guarded(r.resource.canonical)}


async def test_every_guarded_route_has_one_row_in_the_scope_table(client):
    """Every routed /api/ and /console/ path (twins included) has its row, and every row is routed: a new
    route without a scope fails here."""
    routed = _routes(client)
    assert len(routed) > 40
    missing = sorted(route for route in routed if table_key(*route) not in ROUTE_SCOPES)
    assert not missing, f"routes without a scope in tracker/scopes.py ROUTE_SCOPES: {missing}"
    stale = sorted(set(ROUTE_SCOPES) - {table_key(*route) for route in routed})
    assert not stale, f"rows of ROUTE_SCOPES that route nowhere: {stale}"
    assert {needs.scope for needs in ROUTE_SCOPES.values()} == {*Scope, None}


def _policy(path: str) -> Scope | None:
    """Issue 12's split, stated as rules over paths (the table states it route by route)."""
    if path.startswith("/console/"):
        return Scope.ADMIN
    if "/message" in path:
        return Scope.MESSAGES
    if path.startswith(("/api/v1/visitor/", "/api/v1/tracker/")):
        return Scope.TRACK
    if path.rstrip("/") in ("/api/v1/account/info", "/api/v1/version", "/api/openapi.json"):
        return None
    return Scope.CONTACTS


async def test_the_table_follows_the_split_of_issue_12(client):
    """Visitor histories and rejected events are ``track``'s; messages, smartsend and outboxes ``messages``';
    the console ``admin``'s; erasing ``admin``'s and deleting ``contacts'``; everything else ``contacts'``."""
    for method, path in _routes(client):
        needs = ROUTE_SCOPES[table_key(method, path)]
        assert needs.scope == _policy(path), (method, path, needs)
        assert needs.erase == (Scope.ADMIN if method == "DELETE" and path.startswith("/api/v1/contact") else None)


@pytest.mark.parametrize("holder", sorted(KEYS))
async def test_a_key_passes_exactly_the_routes_of_its_scopes(client, database_url, holder):
    """On every route, a key without the route's scope is a 403 naming that scope and changing nothing; a key
    with it gets past the check (whatever the empty request then earns: never 401 or 403)."""
    before = await table_counts(database_url)
    headers = auth(PRESENTED[holder])
    for method, path in sorted(_routes(client)):
        needs = ROUTE_SCOPES[table_key(method, path)]
        r = await client.request(method, _url(path), headers=headers, json={}, allow_redirects=False)
        if needs.scope is None or needs.scope in HELD[holder]:
            assert r.status not in (401, 403), (holder, method, path, r.status, await r.text())
            continue
        assert r.status == 403, (holder, method, path, r.status)
        if method == "HEAD":
            continue
        if path.startswith("/console/"):  # the console answers as a page, saying what is missing
            assert needs.scope.value in await r.text()
        else:
            body = await r.json()
            assert body["error"] == "forbidden" and body["scope"] == needs.scope.value, body
            assert body["status"] == 403 and needs.scope.value in body["message"]
    assert await table_counts(database_url) == before


async def test_a_contacts_key_works_the_contacts_api_and_nothing_else(client, database_url):
    """A contacts-only key adds, reads, imports, posts events and orders and deletes; it may not send
    messages, read visitor histories, erase or open the console."""
    key = auth("contacts-key")
    r = await client.post("/api/v1/contact", headers=key, json={
        "externalCustomerId": "C-SCOPE-1", "channels": [{"type": "email", "value": "scope@example.com"}]})
    assert r.status == 200, await r.text()
    contact = (await r.json())["id"]
    for method, path, body in (
            ("GET", f"/api/v1/contact/{contact}", None),
            ("GET", "/api/v1/contacts?externalCustomerId=C-SCOPE-1", None),
            ("POST", "/api/v1/contacts", {"dedupeOn": "email", "contacts": [
                {"channels": [{"type": "email", "value": "bulk@example.com"}]}]}),
            ("POST", "/api/v2/event", {"eventTypeKey": "login", "keyValue": "C-SCOPE-1",
                                       "params": [{"name": "externalCustomerId", "value": "C-SCOPE-1"}]}),
            ("POST", "/api/v1/orders", {"orders": [{"externalOrderId": "O-SCOPE-1", "externalCustomerId": "C-SCOPE-1",
                                                    "status": "INITIALIZED", "date": "2026-11-30T10:00:00Z",
                                                    "totalCost": 1, "currency": "USD"}]}),
            ("POST", "/api/v1/groups", {"name": "vip", "type": "static"}),
            ("GET", "/api/v1/account/info", None)):
        r = await client.request(method, path, headers=key, json=body)
        assert 200 <= r.status < 300, (method, path, r.status, await r.text())
    before = await table_counts(database_url)
    for method, path, scope in (
            ("POST", "/api/v1/messages", "messages"),
            ("POST", "/api/v1/message/1/smartsend", "messages"),
            ("GET", f"/api/v1/contact/{contact}/messages", "messages"),
            ("GET", f"/api/v1/visitor/{VID}/events", "track"),
            ("GET", "/api/v1/tracker/rejected", "track"),
            ("DELETE", f"/api/v1/contact/{contact}?erase=true", "admin"),
            ("DELETE", f"/api/v1/contact/{contact}?erase=TRUE", "admin"),
            ("DELETE", f"/api/v1/contact/{contact}?erase=1", "admin"),
            ("DELETE", f"/api/v1/contact/{contact}?erase=false&erase=true", "admin"),
            ("DELETE", "/api/v1/contact?externalCustomerId=C-SCOPE-1&erase=true", "admin"),
            ("DELETE", f"/api/v1/contact/{contact}/?erase=true", "admin")):
        r = await client.request(method, path, headers=key, json={"channel": "email", "name": "n", "body": "b"})
        body = await r.json()
        assert (r.status, body["error"], body["scope"]) == (403, "forbidden", scope), (method, path, body)
    assert await table_counts(database_url) == before
    r = await client.get("/console/", headers=key)
    assert r.status == 403 and "admin" in await r.text()
    r = await client.delete(f"/api/v1/contact/{contact}?erase=false", headers=key)
    assert r.status == 200 and (await r.json())["status"] == "deleted"


async def test_a_messages_key_sends_and_an_admin_key_erases(client):
    """The messages key creates a message and smartsends it; only the admin key erases the contact, and
    only the track key (or a full one) reads a visitor's history."""
    r = await client.post("/api/v1/contact", headers=auth("contacts-key"), json={
        "externalCustomerId": "C-SCOPE-2", "channels": [{"type": "email", "value": "two@example.com"}]})
    contact = (await r.json())["id"]
    messages = auth("messages-key")
    r = await client.post("/api/v1/messages", headers=messages,
                          json={"channel": "email", "name": "hi", "subject": "Hi", "body": "Hello"})
    assert r.status == 200, await r.text()
    message = (await r.json())["id"]
    r = await client.post(f"/api/v1/message/{message}/smartsend", headers=messages,
                          json={"recipients": [{"contactId": contact}]})
    assert r.status == 200 and (await r.json())["results"][0]["status"] == "OK"
    r = await client.get(f"/api/v1/message/{message}/outbox", headers=messages)
    assert r.status == 200 and (await r.json())["total"] == 1
    r = await client.get(f"/api/v1/contact/{contact}", headers=messages)
    assert r.status == 403 and (await r.json())["scope"] == "contacts"
    r = await client.get(f"/api/v1/visitor/{VID}/events", headers=auth("track-key"))
    assert r.status in (200, 404), await r.text()
    r = await client.delete(f"/api/v1/contact/{contact}?erase=true", headers=auth("admin-key"))
    assert r.status == 200 and (await r.json())["status"] == "erased"
    r = await client.get("/console/", headers=auth("admin-key"))
    assert r.status == 200


async def test_a_hashed_key_is_its_plain_text_and_holds_its_scopes(client):
    """A key configured as its SHA-256 is accepted in plain text with the scopes its entry names; its hash
    presented as a key is not."""
    key = auth(HASHED)
    r = await client.post("/api/v1/contact", headers=key, json={"externalCustomerId": "C-HASH-1"})
    assert r.status == 200, await r.text()
    r = await client.get("/api/v1/messages", headers=key)
    assert r.status == 200
    r = await client.get("/api/v1/tracker/rejected", headers=key)
    assert r.status == 403 and (await r.json())["scope"] == "track"
    for wrong in (hashlib.sha256(HASHED.encode()).hexdigest(), HASHED.lower(), HASHED + " "):
        r = await client.get("/api/v1/messages", headers=auth(wrong))
        assert r.status == 401


@pytest.mark.parametrize("headers", [{}, auth("unknown-key"), auth(""), {"Authorization": "Bearer contacts-key"},
                                     {"Authorization": aiohttp.encode_basic_auth("contacts-key", "")}])
async def test_no_or_an_unknown_key_is_a_401_naming_the_scope(client, database_url, headers):
    """Without a configured key every guarded route is a 401 asking for Basic auth (JSON on the API, naming
    the scope the route needs), and changes nothing."""
    before = await table_counts(database_url)
    for method, path in sorted(_routes(client)):
        r = await client.request(method, _url(path), headers=headers, json={}, allow_redirects=False)
        assert r.status == 401, (method, path, r.status)
        assert r.headers["WWW-Authenticate"].startswith("Basic")
        if path.startswith("/api/") and method != "HEAD":
            body = await r.json()
            assert body["error"] == "unauthorized"
            assert body.get("scope") == ROUTE_SCOPES[table_key(method, path)].scope_for(MultiDict()), body
    assert await table_counts(database_url) == before


async def test_a_plain_key_without_scopes_may_do_everything(client):
    """``API_KEYS=a,b`` as before scopes existed: such a key erases, sends, reads histories and the console."""
    r = await client.post("/api/v1/contact", headers=auth(), json={"externalCustomerId": f"C-{uuid.uuid4()}"})
    contact = (await r.json())["id"]
    for method, path in (("GET", f"/api/v1/visitor/{VID}/events"), ("GET", "/api/v1/messages"),
                         ("GET", "/console/"), ("DELETE", f"/api/v1/contact/{contact}?erase=true")):
        r = await client.request(method, path, headers=auth())
        assert r.status in (200, 404), (path, r.status)


@pytest.mark.parametrize("command", [["serve"], ["replay", "tests/fixtures/example2_web.jsonl"]])
def test_a_malformed_api_keys_entry_stops_the_start(clean_redis, database_url, tmp_path, command):
    """``stitcher serve`` (and every other command) refuses to start on a malformed API_KEYS entry: exit 2 and
    one line naming the entry and the problem, without the key."""
    env = {**os.environ, "REDIS_URL": clean_redis, "DATABASE_URL": database_url, "VAR_DIR": str(tmp_path),
           "API_KEYS": "fine-key,leaky-secret:contact+admin", "PORT": "1"}
    done = subprocess.run([str(Path(sys.executable).parent / "stitcher"), *command], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == ("stitcher: API_KEYS entry 2: unknown scope 'contact' (scopes: track, contacts, "
                                   "messages, admin, joined with '+', e.g. key:contacts+messages; a key itself "
                                   "holds no ':')")
    assert "leaky" not in done.stdout + done.stderr


def test_replay_without_a_full_plain_key_asks_for_one(tmp_path):
    """``stitcher replay`` plays with the first plain key holding every scope; when API_KEYS has none (scoped
    or hashed keys only) it asks for ``--api-key`` rather than playing with a key that would meet 403s."""
    env = {**os.environ, "API_KEYS": f"contacts-key:contacts,sha256:{'ab' * 32}", "VAR_DIR": str(tmp_path)}
    done = subprocess.run([str(Path(sys.executable).parent / "stitcher"), "replay", "tests/fixtures/smartsend.jsonl",
                           "--url", "http://127.0.0.1:1"], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert (done.returncode, done.stderr.strip()) == (
        2, "stitcher replay: give --api-key: API_KEYS holds no plain key with every scope")
