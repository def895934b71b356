"""How a dynamic group's condition values compare with what contacts hold, the same on SQLite and PostgreSQL:
channel values normalised as the identifier rules store them, and custom fields' JSON booleans, numbers and
strings by one rule (stitcher.domain.segments' module doc)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from stitcher.app import init_app
from stitcher.domain.segments import Match, parse_group
from stitcher.store import segments
from stitcher.store.db import Database
from stitcher.store.models import Group
from tests.helpers import add_contact, call
from tests.integration.test_groups import dynamic


@pytest.fixture
async def client(aiohttp_client: Any, settings: Any) -> Any:
    return await aiohttp_client(init_app(dataclasses.replace(settings, worker_enabled=False)))


async def test_channel_conditions_read_the_value_as_a_stored_phone_or_email(client: Any) -> None:
    """A phone written with spaces, dashes or ``00`` and an email in any case or padded with spaces find the
    contact whose channel is stored normalised; ``contains`` a phone ignores its spacing."""
    ann = await add_contact(client, channels=[{"type": "sms", "value": "+420777123456"},
                                              {"type": "email", "value": "ann@example.com"}])
    bob = await add_contact(client, channels=[{"type": "sms", "value": "+380671234567"},
                                              {"type": "email", "value": "Bob.Smith@Example.org"}])
    for phone in ("+420 777 123 456", "00420-777-123-456", " +420 (777) 123456 ", 420777123456):
        assert await dynamic(client, {"field": "sms", "op": "equals", "value": phone}) == [ann], phone
        assert await dynamic(client, {"field": "sms", "op": "not_equals", "value": phone}) == [bob], phone
    for email in ("ANN@Example.COM", "  ann@example.com ", "Ann@EXAMPLE.com"):
        assert await dynamic(client, {"field": "email", "op": "equals", "value": email}) == [ann], email
        assert await dynamic(client, {"field": "email", "op": "not_equals", "value": email}) == [bob], email
    assert await dynamic(client, {"field": "sms", "op": "contains", "value": "777 123"}) == [ann]
    assert await dynamic(client, {"field": "sms", "op": "contains", "value": 777123}) == [ann]
    assert await dynamic(client, {"field": "sms", "op": "contains", "value": "(067) 12-34"}) == [bob]
    assert await dynamic(client, {"field": "email", "op": "contains", "value": " SMITH@ "}) == [bob]


async def test_the_stored_form_is_shown_back_and_a_value_no_contact_could_have_is_a_400(client: Any) -> None:
    """The group shows the value as it compares it; an impossible phone or email names the condition."""
    status, body = await call(client, "POST", "/api/v1/groups", {
        "name": "Czech", "type": "dynamic", "conditions": [
            {"field": "sms", "op": "equals", "value": "+420 777 123 456"},
            {"field": "email", "op": "not_equals", "value": " Ann@Example.COM"},
            {"field": "sms", "op": "contains", "value": "777 12"}]})
    assert status == 200, body
    shown = (await call(client, "GET", f"/api/v1/group/{body['id']}"))[1]["conditions"]
    assert [c["value"] for c in shown] == ["+420777123456", "ann@example.com", "77712"]
    for condition in ({"field": "sms", "op": "equals", "value": "not a phone"},
                      {"field": "email", "op": "equals", "value": "no-at-sign"},
                      {"field": "sms", "op": "contains", "value": "-- --"},
                      {"field": "email", "op": "contains", "value": "   "}):
        status, body = await call(client, "POST", "/api/v1/groups", {"name": "Bad", "type": "dynamic",
                                                                     "conditions": [condition]})
        assert status == 400 and body["errors"][0]["field"] == "conditions[0].value", (condition, body)


STORED: dict[str, Any] = {"true": True, "false": False, "one": 1, "one-float": 1.0, "half": 0.5,
                          "str-true": "true", "str-one": "1", "str-True": "True", "null": None,
                          "object": {"a": 1}, "list": [1], "huge": 1e30}
# condition value -> the stored values it equals
MATRIX: list[tuple[Any, set[str]]] = [
    (True, {"true", "str-true"}),
    ("true", {"true", "str-true"}),
    (False, {"false"}),
    ("True", {"str-True"}),
    (1, {"one", "one-float", "str-one"}),
    ("1", {"one", "one-float", "str-one"}),
    (1.0, {"one", "one-float"}),
    ("1.0", {"one", "one-float"}),
    (0.5, {"half"}),
    ("5e-1", {"half"}),
    ("01", set()),
    (10**18, set()),
    ("1e30", {"huge"}),
    (1e30, {"huge"}),
]


async def test_custom_field_booleans_numbers_and_strings_compare_by_one_rule(client: Any) -> None:
    """Each condition value of the matrix equals exactly the stored values it lists (not_equals the rest);
    is_set holds for every value but null; contains searches strings only."""
    ids = {name: await add_contact(client, externalCustomerId=f"C-{name}", fields=[{"id": 5, "value": value}])
           for name, value in STORED.items()}
    by_id = {cid: name for name, cid in ids.items()}
    for value, expected in MATRIX:
        found = {by_id[c] for c in await dynamic(client, {"field": 5, "op": "equals", "value": value})}
        assert found == expected, value
        found = {by_id[c] for c in await dynamic(client, {"field": 5, "op": "not_equals", "value": value})}
        assert found == set(STORED) - expected, value
    assert {by_id[c] for c in await dynamic(client, {"field": 5, "op": "is_set"})} == set(STORED) - {"null"}
    assert {by_id[c] for c in await dynamic(client, {"field": 5, "op": "contains", "value": "1"})} == {"str-one"}
    assert {by_id[c] for c in await dynamic(client, {"field": 5, "op": "contains", "value": "TRU"})} == {
        "str-true", "str-True"}


async def test_a_custom_field_condition_value_of_another_type_is_a_400(client: Any) -> None:
    for value in (None, {"a": 1}, [1], 10**30, ""):
        status, body = await call(client, "POST", "/api/v1/groups", {
            "name": "Bad", "type": "dynamic", "conditions": [{"field": 5, "op": "equals", "value": value}]})
        assert status == 400 and body["errors"][0]["field"] == "conditions[0].value", (value, body)


def test_custom_field_conditions_read_the_fields_once_whatever_their_number() -> None:
    """50 custom field conditions are one pass over a contact's fields, not 50 (they cost 19 s on SQLite over
    20,000 contacts of 20 fields, as 50 passes): the SQL expands the fields once, in either match."""
    conditions = [{"field": i, "op": op, "value": "x"} for i in range(25) for op in ("contains", "not_equals")]
    spec = parse_group({"name": "wide", "type": "dynamic", "conditions": conditions})
    for dialect, expand in (("sqlite", "json_each("), ("postgresql", "jsonb_array_elements(")):
        for match in Match:
            sql = str(segments.dynamic_members(spec.conditions, match, dialect, 0).compile())
            assert sql.count(expand) == 1, (dialect, match)


async def test_a_group_condition_names_only_an_existing_static_group_so_no_cycle_can_form(client: Any) -> None:
    """``group`` takes a static group's id: a dynamic group (itself included: its id is not known before it
    exists), an unknown or a deleted group is a 400 naming the condition; a group deleted later leaves the
    dynamic group matching nobody, and ids are never reused, so a reference never turns into another
    group's, never a chain or a cycle to follow."""
    static = (await call(client, "POST", "/api/v1/groups", {"name": "S", "type": "static"}))[1]["id"]
    seg = (await call(client, "POST", "/api/v1/groups", {"name": "D", "type": "dynamic", "conditions": [
        {"field": "group", "op": "equals", "value": static}]}))[1]["id"]
    doomed = (await call(client, "POST", "/api/v1/groups", {"name": "T", "type": "static"}))[1]["id"]
    assert (await call(client, "DELETE", f"/api/v1/group/{doomed}"))[0] == 200
    for target in (seg, seg + 1, doomed, 2**63 - 1):
        status, body = await call(client, "POST", "/api/v1/groups", {"name": f"R{target}", "type": "dynamic",
                                                                     "conditions": [{"field": "group", "op":
                                                                                     "not_equals", "value": target}]})
        assert status == 400 and body["errors"] == [{"field": "conditions[0].value",
                                                     "message": "no static group has this id"}], target
    assert (await call(client, "DELETE", f"/api/v1/group/{static}"))[0] == 200
    fresh = (await call(client, "POST", "/api/v1/groups", {"name": "S2", "type": "static"}))[1]["id"]
    assert fresh not in (static, doomed)
    await add_contact(client, externalCustomerId="C-1", groups=["S2"])
    status, members = await call(client, "GET", f"/api/v1/group/{seg}/contacts")
    assert (status, members) == (200, [])


async def test_a_thousand_conditions_or_a_huge_value_is_a_400_not_a_query(client: Any) -> None:
    """More conditions than 50 (within the body's 64 KiB), or a value past its bound, is refused whole."""
    for conditions in ([{"field": 5, "op": "is_set"}] * 1000, [{"field": 5, "op": "equals", "value": "x" * 1025}],
                       [{"field": "sms", "op": "contains", "value": "1" * 1025}],
                       [{"field": 5, "op": "equals", "value": 10**400}]):
        status, body = await call(client, "POST", "/api/v1/groups", {"name": "Big", "type": "dynamic",
                                                                     "conditions": conditions})
        assert 400 <= status < 500 and status != 500, body


async def test_a_stored_group_the_rules_now_refuse_is_a_409_naming_its_conditions(client: Any,
                                                                                  database_url: str) -> None:
    """A dynamic group stored before channel values were normalised (``sms equals "abc"``) is read as a 409
    saying which condition the rules now refuse, not a 400 for the reader's request nor a 500."""
    status, body = await call(client, "POST", "/api/v1/groups", {"name": "Old", "type": "dynamic", "conditions": [
        {"field": "sms", "op": "is_set"}]})
    assert status == 200, body
    db = Database(database_url)
    try:
        async with db.transaction() as s:
            group = await s.get(Group, body["id"])
            assert group is not None
            group.conditions = [{"field": "sms", "op": "equals", "value": "abc"}]
    finally:
        await db.close()
    status, answer = await call(client, "GET", f"/api/v1/group/{body['id']}/contacts")
    assert status == 409 and answer["error"] == "group_conditions_stale", answer
    assert [e["field"] for e in answer["errors"]] == ["conditions[0].value"]
