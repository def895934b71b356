"""Groups and dynamic segments (issue 10): create, list, read, delete; static groups filled by contact writes;
dynamic groups evaluated in SQL when read; the members paginated like the platform. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from stitcher.app import init_app
from tests.conftest import auth
from tests.helpers import add_contact, beacon, call, get_contact, now_ms, page_views, sql_scalar
from tracker.routes import SETTINGS


@pytest.fixture
async def client(aiohttp_client: Any, settings: Any) -> Any:
    """The service without its drain worker (no test here needs a beacon drained later than the write)."""
    return await aiohttp_client(init_app(dataclasses.replace(settings, worker_enabled=False)))


async def create(client: Any, body: dict[str, Any]) -> int:
    status, answer = await call(client, "POST", "/api/v1/groups", body)
    assert status == 200, answer
    return int(answer["id"])


async def members(client: Any, group_id: int, **params: Any) -> tuple[list[int], int]:
    """The ids on one page of a group's contacts and its TotalCount."""
    r = await client.get(f"/api/v1/group/{group_id}/contacts", params=params, headers=auth())
    assert r.status == 200, await r.text()
    return [c["id"] for c in await r.json()], int(r.headers["TotalCount"])


async def dynamic(client: Any, *conditions: dict[str, Any], match: str = "all") -> list[int]:
    """Every member of a new dynamic group with these conditions."""
    gid = await create(client, {"name": f"seg-{now_ms()}-{id(conditions)}", "type": "dynamic", "match": match,
                                "conditions": list(conditions)})
    ids, total = await members(client, gid)
    assert total == len(ids)
    return ids


async def test_the_seeds_check_is_one_post_and_one_get(client: Any) -> None:
    """Every contact without an external ID: one POST of a dynamic group, one GET of its contacts; deleted and
    merged contacts are left out and a new contact falls in by itself."""
    with_id = await add_contact(client, externalCustomerId="E-1", channels=[{"type": "email", "value": "a@x.io"}])
    anon = await add_contact(client, channels=[{"type": "email", "value": "b@x.io"}])
    gone = await add_contact(client, channels=[{"type": "email", "value": "c@x.io"}])
    assert (await call(client, "DELETE", f"/api/v1/contact/{gone}"))[0] == 200
    # merged: a token-only contact taken by the email contact's subscribe with both
    token = await add_contact(client, channels=[{"type": "mobilepush", "value": "tok-1"}])
    status, merged = await call(client, "POST", "/api/v1/contact", {
        "channels": [{"type": "email", "value": "b@x.io"}, {"type": "mobilepush", "value": "tok-1"}]})
    assert status == 200, merged
    status, body = await call(client, "POST", "/api/v1/groups", {
        "name": "No external ID", "type": "dynamic",
        "conditions": [{"field": "externalCustomerId", "op": "not_set"}]})
    assert status == 200 and set(body) == {"id"}, body
    live = {anon, token} - {c for c in (anon, token) if c != merged["id"]}
    r = await client.get(f"/api/v1/group/{body['id']}/contacts", headers=auth())
    assert r.status == 200
    assert [c["id"] for c in await r.json()] == sorted(live) and r.headers["TotalCount"] == str(len(live))
    assert with_id not in live and gone not in live
    later = await add_contact(client, channels=[{"type": "sms", "value": "+380671234567"}])
    assert (await members(client, body["id"]))[0] == sorted({*live, later})


async def test_create_list_get_delete_and_a_duplicate_name(client: Any) -> None:
    """A group reads back as created; a second group with the name is a 409; DELETE removes it (404 after),
    its memberships with it, the contact's identity log untouched, and the contact no longer lists it."""
    cid = await add_contact(client, externalCustomerId="G-1", groups=["VIP"])
    vip = (await get_contact(client, cid))["groups"][0]["id"]
    seg = await create(client, {"name": "Recent", "type": "dynamic", "match": "any",
                                "conditions": [{"field": "createdAt", "op": "within_days", "value": 7}]})
    status, listed = await call(client, "GET", "/api/v1/groups")
    assert status == 200
    assert listed == [{"id": vip, "name": "VIP", "type": "static"},
                      {"id": seg, "name": "Recent", "type": "dynamic", "match": "any",
                       "conditions": [{"field": "createdAt", "op": "within_days", "value": 7}]}]
    assert (await call(client, "GET", f"/api/v1/group/{seg}/"))[1] == listed[1]
    status, body = await call(client, "POST", "/api/v1/groups", {"name": "VIP", "type": "dynamic",
                                                                 "conditions": [{"field": "visitor", "op": "is_set"}]})
    assert status == 409 and body["error"] == "group_exists" and body["groupId"] == vip, body
    log_before = (await call(client, "GET", f"/api/v1/contact/{cid}/identity-log"))[1]
    assert (await members(client, vip)) == ([cid], 1)
    status, body = await call(client, "DELETE", f"/api/v1/group/{vip}")
    assert status == 200 and body == {"id": vip, "status": "deleted"}
    assert (await call(client, "GET", f"/api/v1/group/{vip}"))[0] == 404
    assert (await call(client, "DELETE", f"/api/v1/group/{vip}"))[0] == 404
    assert (await call(client, "GET", f"/api/v1/group/{vip}/contacts"))[0] == 404
    assert (await get_contact(client, cid))["groups"] == []
    assert (await call(client, "GET", f"/api/v1/contact/{cid}/identity-log"))[1] == log_before
    assert await sql_scalar(_url(client), "SELECT count(*) FROM group_members") == 0


def _url(client: Any) -> str:
    return str(client.app[SETTINGS].effective_database_url)


async def test_a_dynamic_group_takes_no_static_members_and_a_deleted_group_is_not_joined(client: Any) -> None:
    """Naming a dynamic group (by name or id) on add/update or subscribe lists it under ``ignored`` and the
    rest lands; a group named by id that was deleted is ignored, never re-created by its name."""
    seg = await create(client, {"name": "Seg", "type": "dynamic",
                                "conditions": [{"field": "email", "op": "is_set"}]})
    gone = await create(client, {"name": "Gone", "type": "static"})
    assert (await call(client, "DELETE", f"/api/v1/group/{gone}"))[0] == 200
    status, body = await call(client, "POST", "/api/v1/contact/subscribe", {
        "contact": {"channels": [{"type": "email", "value": "s@x.io"}], "groups": ["Seg", {"id": gone}]},
        "groups": [{"id": seg}, "Kept"]})
    assert status == 200, body
    assert body["groups"] == ["Kept"]
    assert body["ignored"] == [{"field": "contact.groups[1].id", "reason": "no group has this id"},
                               {"field": "contact.groups", "reason": "'Seg': a dynamic group takes no members: its "
                                                                 "conditions decide who is in it"},
                               {"field": "groups[0].id", "reason": "a dynamic group takes no members: its "
                                                                  "conditions decide who is in it"}]
    assert [g["name"] for g in (await get_contact(client, body["id"]))["groups"]] == ["Kept"]
    assert [g["name"] for g in (await call(client, "GET", "/api/v1/groups"))[1]] == ["Seg", "Kept"]
    assert (await members(client, seg))[0] == [body["id"]]  # in it by its condition, not by the request


async def test_an_import_naming_a_dynamic_group_lands_without_joining_it_and_says_so(client: Any) -> None:
    """``groupNames`` or a row's ``groups`` naming a dynamic group: the rows land, the dynamic group gains no
    static member, and the import says what it left out as a contact write does — the answer's and the
    final description's ``groupNames``, the row's mapping entry for its own ``groups``."""
    seg = await create(client, {"name": "SegImp", "type": "dynamic",
                                "conditions": [{"field": "lastName", "op": "equals", "value": "Nobody"}]})
    status, body = await call(client, "POST", "/api/v1/contacts", {
        "dedupeOn": "email", "groupNames": ["SegImp", "Imported"],
        "contacts": [{"channels": [{"type": "email", "value": f"i{i}@x.io"}],
                      **({"groups": ["SegImp", "Own"]} if i == 1 else {})} for i in range(3)]})
    assert status == 200, body
    reason = "'SegImp': a dynamic group takes no members: its conditions decide who is in it"
    assert body["ignored"] == [{"field": "groupNames", "reason": reason}]
    for _ in range(200):
        status, state = await call(client, "GET", f"/api/v1/importstatus/{body['asyncSessionId']}")
        if state["status"] in ("FINISHED", "ERROR"):
            break
        await asyncio.sleep(0.05)
    assert state["status"] == "FINISHED", state
    assert state["description"] == f"3 rows processed; groupNames: {reason}"
    assert [m.get("ignored") for m in state["mapping"]] == [None, [{"field": "groups", "reason": reason}], None]
    assert (await members(client, seg)) == ([], 0)
    listed = {g["name"]: g["id"] for g in (await call(client, "GET", "/api/v1/groups"))[1]}
    assert (await members(client, listed["Imported"]))[1] == 3
    assert (await members(client, listed["Own"]))[1] == 1
    status, body = await call(client, "POST", "/api/v1/contacts", {
        "dedupeOn": "email", "groupNames": ["Imported"],
        "contacts": [{"channels": [{"type": "email", "value": "j@x.io"}]}]})
    assert status == 200 and "ignored" not in body, body


async def test_static_group_pages_like_the_platform(client: Any) -> None:
    """``startindex`` is 1-based, ``maxrows`` at most 500, pages are by id and never overlap; past the end an
    empty page with the same TotalCount."""
    ids = [await add_contact(client, channels=[{"type": "email", "value": f"p{i}@x.io"}], groups=["Paged"])
           for i in range(7)]
    gid = (await get_contact(client, ids[0]))["groups"][0]["id"]
    assert await members(client, gid, startindex=1, maxrows=3) == (ids[:3], 7)
    assert await members(client, gid, startindex=4, maxrows=3) == (ids[3:6], 7)
    assert await members(client, gid, startindex=7, maxrows=500) == (ids[6:], 7)
    assert await members(client, gid, startindex=8) == ([], 7)
    for bad in ({"maxrows": "501"}, {"maxrows": "0"}, {"startindex": "0"}, {"startindex": "x"},
                {"maxrows": "1\x00"}):
        r = await client.get(f"/api/v1/group/{gid}/contacts", params=bad, headers=auth())
        assert r.status == 400, (bad, await r.text())
    page = (await call(client, "GET", f"/api/v1/group/{gid}/contacts?maxrows=1"))[1]
    assert page[0]["channels"] == [{"type": "email", "value": "p0@x.io"}]


async def test_the_groups_list_pages_like_the_platform(client: Any) -> None:
    """``GET /api/v1/groups`` pages as a group's contacts do: by id, ``startindex`` 1-based, ``maxrows`` ≤ 500,
    the whole count in ``TotalCount``; bad page parameters are a 400 naming them."""
    ids = [await create(client, {"name": f"G{i}", "type": "static"}) for i in range(5)]

    async def listed(**params: Any) -> tuple[list[int], int]:
        r = await client.get("/api/v1/groups", params=params, headers=auth())
        assert r.status == 200, await r.text()
        return [g["id"] for g in await r.json()], int(r.headers["TotalCount"])

    assert await listed() == (ids, 5)
    assert await listed(startindex=1, maxrows=2) == (ids[:2], 5)
    assert await listed(startindex=3, maxrows=2) == (ids[2:4], 5)
    assert await listed(startindex=5, maxrows=500) == (ids[4:], 5)
    assert await listed(startindex=6) == ([], 5)
    for bad in ({"maxrows": "501"}, {"maxrows": "0"}, {"startindex": "0"}, {"startindex": "-1"},
                {"maxrows": "9" * 30}):
        r = await client.get("/api/v1/groups", params=bad, headers=auth())
        assert r.status == 400 and next(iter(bad)) in await r.text(), bad


async def test_each_field_and_op_evaluates_in_sql(client: Any) -> None:
    """Profile fields, channels, custom fields, times, membership, events and visitors, with all/any."""
    ann = await add_contact(client, externalCustomerId="ANN-1", firstName="Ann", lastName="O'Neil",
                            languageCode="uk", fields=[{"id": 7, "value": "gold"}, {"id": "8", "value": 50}],
                            channels=[{"type": "email", "value": "Ann@Example.com"}], groups=["Club"],
                            visitorIds=["11111111-1111-4111-8111-111111111111"])
    bob = await add_contact(client, firstName="Bob", channels=[{"type": "sms", "value": "+380671234567"},
                                                                {"type": "mobilepush", "value": "push-b"}],
                            fields=[{"id": 7, "value": "silver_50%"}])
    club = (await get_contact(client, ann))["groups"][0]["id"]
    both = sorted([ann, bob])
    assert await dynamic(client, {"field": "externalCustomerId", "op": "is_set"}) == [ann]
    assert await dynamic(client, {"field": "externalCustomerId", "op": "equals", "value": "ANN-1"}) == [ann]
    assert await dynamic(client, {"field": "externalCustomerId", "op": "not_equals", "value": "ANN-1"}) == [bob]
    assert await dynamic(client, {"field": "firstName", "op": "contains", "value": "AN"}) == [ann]
    assert await dynamic(client, {"field": "lastName", "op": "contains", "value": "'"}) == [ann]
    assert await dynamic(client, {"field": "lastName", "op": "not_set"}) == [bob]
    assert await dynamic(client, {"field": "languageCode", "op": "equals", "value": "uk"}) == [ann]
    assert await dynamic(client, {"field": "email", "op": "equals", "value": "ANN@example.com"}) == [ann]
    assert await dynamic(client, {"field": "email", "op": "contains", "value": "example"}) == [ann]
    assert await dynamic(client, {"field": "sms", "op": "is_set"}) == [bob]
    assert await dynamic(client, {"field": "mobilepush", "op": "not_set"}) == [ann]
    assert await dynamic(client, {"field": "sms", "op": "not_equals", "value": "+380671234567"}) == [ann]
    assert await dynamic(client, {"field": 7, "op": "equals", "value": "gold"}) == [ann]
    assert await dynamic(client, {"field": "8", "op": "equals", "value": "50"}) == [ann]
    assert await dynamic(client, {"field": "7", "op": "contains", "value": "_50%"}) == [bob]
    assert await dynamic(client, {"field": 7, "op": "contains", "value": "l"}) == both
    assert await dynamic(client, {"field": 8, "op": "not_set"}) == [bob]
    assert await dynamic(client, {"field": 9, "op": "is_set"}) == []
    assert await dynamic(client, {"field": "createdAt", "op": "within_days", "value": 1}) == both
    assert await dynamic(client, {"field": "createdAt", "op": "before", "value": "2000-01-01"}) == []
    assert await dynamic(client, {"field": "updatedAt", "op": "after", "value": "2000-01-01T00:00:00Z"}) == both
    assert await dynamic(client, {"field": "group", "op": "equals", "value": club}) == [ann]
    assert await dynamic(client, {"field": "group", "op": "not_equals", "value": club}) == [bob]
    assert await dynamic(client, {"field": "visitor", "op": "is_set"}) == [ann]
    assert await dynamic(client, {"field": "visitor", "op": "not_set"}) == [bob]
    status, body = await call(client, "POST", "/api/v2/event", {"eventTypeKey": "cartAbandoned",
                                                                 "keyValue": "ANN-1",
                                                                 "params": [{"name": "externalCustomerId",
                                                                             "value": "ANN-1"}]})
    assert status == 200, body
    assert await dynamic(client, {"field": "event", "op": "equals", "value": "cartAbandoned"}) == [ann]
    assert await dynamic(client, {"field": "event", "op": "not_equals", "value": "cartAbandoned"}) == [bob]
    assert await dynamic(client, {"field": "event", "op": "within_days",
                                  "value": {"type": "cartAbandoned", "days": 3}}) == [ann]
    assert await dynamic(client, {"field": "event", "op": "not_set"}) == [bob]
    assert await dynamic(client, {"field": "firstName", "op": "equals", "value": "Ann"},
                         {"field": "sms", "op": "is_set"}) == []
    assert await dynamic(client, {"field": "firstName", "op": "equals", "value": "Ann"},
                         {"field": "sms", "op": "is_set"}, match="any") == both


async def test_a_visitors_old_events_count_once_stitched(client: Any) -> None:
    """An anonymous page view stitched onto the contact at subscribe is an ``event`` of type page_view."""
    vid = "22222222-2222-4222-8222-222222222222"
    await beacon(client, vid, page_views(2))
    status, body = await call(client, "POST", "/api/v1/contact/subscribe", {
        "contact": {"externalCustomerId": "V-1", "visitorIds": [vid]}})
    assert status == 200, body
    assert await dynamic(client, {"field": "event", "op": "equals", "value": "page_view"}) == [body["id"]]


BAD_GROUPS: list[tuple[Any, str]] = [
    ({"name": "x", "type": "dynamic", "conditions": [{"field": "shoeSize", "op": "is_set"}]},
     "conditions[0].field"),
    ({"name": "x", "type": "dynamic", "conditions": [{"field": "email", "op": "matches", "value": "a"}]},
     "conditions[0].op"),
    ({"name": "x", "type": "dynamic", "conditions": [{"field": "email", "op": "before", "value": "2020-01-01"}]},
     "conditions[0].op"),
    ({"name": "x", "type": "dynamic", "conditions": [{"field": "createdAt", "op": "contains", "value": "1"}]},
     "conditions[0].op"),
    ({"name": "x", "type": "dynamic", "conditions": [{"field": "visitor", "op": "equals", "value": "v"}]},
     "conditions[0].op"),
    ({"name": "x", "type": "dynamic", "conditions": [{"field": "createdAt", "op": "before", "value": "soon"}]},
     "conditions[0].value"),
    ({"name": "x", "type": "dynamic", "conditions": [{"field": "createdAt", "op": "within_days", "value": "7"}]},
     "conditions[0].value"),
    ({"name": "x", "type": "dynamic", "conditions": [{"field": "createdAt", "op": "within_days", "value": True}]},
     "conditions[0].value"),
    ({"name": "x", "type": "dynamic", "conditions": [{"field": "email", "op": "equals", "value": 5}]},
     "conditions[0].value"),
    ({"name": "x", "type": "dynamic", "conditions": [{"field": "email", "op": "equals"}]}, "conditions[0].value"),
    ({"name": "x", "type": "dynamic", "conditions": [{"field": "email", "op": "is_set", "value": "a"}]},
     "conditions[0].value"),
    ({"name": "x", "type": "dynamic", "conditions": [{"field": "group", "op": "equals", "value": "VIP"}]},
     "conditions[0].value"),
    ({"name": "x", "type": "dynamic", "conditions": [{"field": "group", "op": "equals", "value": 99999}]},
     "conditions[0].value"),
    ({"name": "x", "type": "dynamic", "conditions": [{"field": "event", "op": "within_days", "value": 3}]},
     "conditions[0].value"),
    ({"name": "x", "type": "dynamic", "conditions": [{"field": "event", "op": "within_days",
                                                      "value": {"days": 3, "type": ["a"]}}]},
     "conditions[0].value.type"),
    ({"name": "x", "type": "dynamic",
      "conditions": [{"field": "email", "op": "is_set", "conditions": [{"field": "email", "op": "is_set"}]}]},
     "conditions[0].conditions"),
    ({"name": "x", "type": "dynamic", "conditions": [[{"field": "email", "op": "is_set"}]]}, "conditions[0]"),
    ({"name": "x", "type": "dynamic", "conditions": [{"field": {"a": 1}, "op": "is_set"}]}, "conditions[0].field"),
    ({"name": "x", "type": "dynamic", "conditions": [{"field": "email", "op": "is_set"}] * 51}, "conditions"),
    ({"name": "x", "type": "dynamic", "conditions": []}, "conditions"),
    ({"name": "x", "type": "dynamic"}, "conditions"),
    ({"name": "x", "type": "static", "conditions": [{"field": "email", "op": "is_set"}]}, "conditions"),
    ({"name": "x", "type": "smart"}, "type"),
    ({"name": "x", "type": "dynamic", "match": "some", "conditions": [{"field": "email", "op": "is_set"}]},
     "match"),
    ({"name": "", "type": "static"}, "name"),
    ({"name": "  ", "type": "static"}, "name"),
    ({"name": "n" * 257, "type": "static"}, "name"),
    ({"name": ["a"], "type": "static"}, "name"),
    ({"type": "static"}, "name"),
    ([{"name": "x"}], "body"),
    ("x", "body"),
]


@pytest.mark.parametrize(("body", "field"), BAD_GROUPS)
async def test_a_bad_group_is_a_400_naming_the_field(client: Any, body: Any, field: str) -> None:
    """A wrong field, op, value type, combination, nesting or size is a 400 naming where; nothing is created."""
    status, answer = await call(client, "POST", "/api/v1/groups", body)
    assert status == 400, answer
    assert answer["error"] == "validation_failed" and field in [e["field"] for e in answer["errors"]], answer
    assert (await call(client, "GET", "/api/v1/groups"))[1] == []


async def test_hostile_bodies_and_paths_are_4xx_never_500(client: Any) -> None:
    """NUL, duplicate keys, deep nesting, huge bodies, bad ids and media types: a JSON 4xx on every endpoint."""
    raw = [b'{"name": "a\\u0000b", "type": "static"}', b'{"name": "a", "name": "b", "type": "static"}',
           b'{"name": "a", "type": "dynamic", "conditions": [{"field": "firstName", "op": "equals", '
           b'"value": "a\\u0000"}]}', b"[" * 100 + b"]" * 100, b"{", b"null", b"1e999",
           b'{"name": "a", "type": "dynamic", "conditions": [' + b'{"field": "email", "op": "is_set"},' * 5000
           + b'{"field": "email", "op": "is_set"}]}']
    for body in raw:
        r = await client.post("/api/v1/groups", data=body, headers={**auth(), "Content-Type": "application/json"})
        assert 400 <= r.status < 500 and "error" in await r.json(), (body[:80], r.status)
    r = await client.post("/api/v1/groups", data=b'{"name": "x" }', headers={**auth(), "Content-Type": "image/png"})
    assert r.status == 415
    r = await client.post("/api/v1/groups", data=b'{"name": "' + b"x" * 70_000 + b'"}',
                          headers={**auth(), "Content-Type": "application/json"})
    assert r.status == 413
    for path in ("/api/v1/group/0", "/api/v1/group/-1", "/api/v1/group/x", "/api/v1/group/99999999999999999999",
                 "/api/v1/group/%00", "/api/v1/group/1%00/contacts", "/api/v1/group/1.5/contacts"):
        for method in ("GET", "DELETE"):
            r = await client.request(method, path, headers=auth())
            assert r.status in (400, 404, 405), (method, path, r.status)
            if r.status != 405:
                assert "error" in await r.json()
    assert (await client.get("/api/v1/groups")).status == 401
    assert (await call(client, "GET", "/api/v1/groups"))[1] == []


async def test_a_name_with_odd_characters_round_trips(client: Any) -> None:
    """Quotes, emoji, SQL wildcards in a group's name and values are data, nothing more."""
    name = "Robert'); DROP TABLE groups;-- 🎉 %_"
    gid = await create(client, {"name": name, "type": "dynamic",
                                "conditions": [{"field": "firstName", "op": "contains", "value": "%_'\\"}]})
    assert (await call(client, "GET", f"/api/v1/group/{gid}"))[1]["name"] == name
    await add_contact(client, firstName="a%_'\\b", channels=[{"type": "email", "value": "odd@x.io"}])
    await add_contact(client, firstName="plain", channels=[{"type": "email", "value": "plain@x.io"}])
    assert (await members(client, gid))[1] == 1
