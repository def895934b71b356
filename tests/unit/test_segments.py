"""A group's body and a dynamic group's conditions, checked as data (stitcher.domain.segments, no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from stitcher.domain.errors import ValidationFailed
from stitcher.domain.segments import (
    DAY_MS,
    OPS,
    Condition,
    FieldKind,
    GroupType,
    Match,
    Op,
    custom_readings,
    parse_group,
)


def dynamic(*conditions: Any, **extra: Any) -> dict[str, Any]:
    return {"name": "seg", "type": "dynamic", "conditions": list(conditions), **extra}


def errors(body: Any) -> list[str]:
    with pytest.raises(ValidationFailed) as caught:
        parse_group(body)
    return [e["field"] for e in caught.value.errors]


def test_the_seeds_check_parses_to_one_not_set_condition() -> None:
    """``externalCustomerId not_set`` is a profile condition on the external ID column, ``match`` all."""
    spec = parse_group(dynamic({"field": "externalCustomerId", "op": "not_set"}))
    assert spec.type is GroupType.DYNAMIC and spec.match is Match.ALL
    assert spec.conditions == (Condition(FieldKind.PROFILE, "external_customer_id", Op.NOT_SET),)
    assert spec.raw_conditions == ({"field": "externalCustomerId", "op": "not_set"},)


def test_a_static_group_is_a_name_and_its_type_defaults_to_static() -> None:
    """The name is trimmed; no conditions."""
    spec = parse_group({"name": "  VIP "})
    assert (spec.name, spec.type, spec.conditions) == ("VIP", GroupType.STATIC, ())


def test_values_are_typed_per_field() -> None:
    """Times become Unix ms, days stay days, emails are lower-cased, custom ids are digits, events keep type."""
    spec = parse_group(dynamic(
        {"field": "createdAt", "op": "before", "value": "2020-01-02T00:00:00Z"},
        {"field": "updatedAt", "op": "within_days", "value": 30},
        {"field": "email", "op": "equals", "value": "Ann@Example.COM"},
        {"field": 12, "op": "contains", "value": "x"},
        {"field": "0012", "op": "is_set"},
        {"field": "event", "op": "within_days", "value": {"days": 2}},
        {"field": "event", "op": "equals", "value": "orderCREATED"},
        {"field": "group", "op": "not_equals", "value": 3}, match="any"))
    assert spec.match is Match.ANY
    assert [(c.target, c.value, c.event_type) for c in spec.conditions] == [
        ("created_at", 1_577_923_200_000, None), ("updated_at", 30, None), ("email", "ann@example.com", None),
        ("12", "x", None), ("12", None, None), ("", 2, None), ("", None, "orderCREATED"), ("", 3, None)]
    assert DAY_MS == 86_400_000


def test_each_kind_takes_only_the_ops_that_make_sense() -> None:
    """Times compare, texts match, membership and visitors are yes/no; every other pairing is refused."""
    assert OPS[FieldKind.TIME] == {Op.BEFORE, Op.AFTER, Op.WITHIN_DAYS}
    assert OPS[FieldKind.VISITOR] == {Op.IS_SET, Op.NOT_SET}
    assert errors(dynamic({"field": "visitor", "op": "contains", "value": "x"})) == ["conditions[0].op"]
    assert errors(dynamic({"field": "firstName", "op": "after", "value": "2020-01-01"})) == ["conditions[0].op"]


def test_every_problem_is_named_at_once() -> None:
    """Several bad conditions and fields: one 400 naming each."""
    assert errors({"name": "", "type": "dynamic", "match": "most", "conditions": [
        {"field": "nope", "op": "is_set"}, {"field": "email", "op": "nope"},
        {"field": "createdAt", "op": "within_days", "value": 0}, "x"]}) == [
        "name", "match", "conditions[0].field", "conditions[1].op", "conditions[2].value", "conditions[3]"]


@pytest.mark.parametrize("value", [True, 1.5, "7", 0, 36_501, None, [7], {"days": 7}])
def test_days_are_a_whole_positive_number(value: Any) -> None:
    """``within_days`` takes 1-36,500 as a JSON integer, nothing else (a boolean is no number here)."""
    assert errors(dynamic({"field": "createdAt", "op": "within_days", "value": value})) == ["conditions[0].value"]


@pytest.mark.parametrize("field", [True, None, 1.5, -1, 2**63, "1e3", "", "12345678901234567890", ["email"]])
def test_a_field_that_is_no_name_nor_custom_id_is_unknown(field: Any) -> None:
    """Only the documented names and non-negative integer ids (or their digits) are fields."""
    assert errors(dynamic({"field": field, "op": "is_set"})) == ["conditions[0].field"]


def test_a_huge_or_nested_body_is_refused_without_work() -> None:
    """More than 50 conditions, a nested condition list, an unknown key, an over-long value."""
    assert errors(dynamic(*[{"field": "email", "op": "is_set"}] * 51)) == ["conditions"]
    assert errors(dynamic({"field": "email", "op": "is_set", "any": []})) == ["conditions[0].any"]
    assert errors(dynamic({"field": "firstName", "op": "equals", "value": "x" * 1025})) == ["conditions[0].value"]
    assert errors(dynamic({"field": "event", "op": "equals", "value": "x" * 129})) == ["conditions[0].value"]


def test_a_custom_field_value_reads_as_text_and_as_the_boolean_or_number_it_spells() -> None:
    """``custom_readings``: "true"/"false" are also booleans; JSON number syntax is also a number (finite);
    anything else is text only. A condition's true / 1 / 1.5 become "true" / "1" / "1.5" first."""
    assert custom_readings("true") == (True, None) and custom_readings("false") == (False, None)
    assert custom_readings("True") == (None, None) and custom_readings("01") == (None, None)
    assert custom_readings("1") == (None, 1.0) and custom_readings("-2.5e1") == (None, -25.0)
    assert custom_readings("1e999") == (None, None) and custom_readings(" 1") == (None, None)
    spec = parse_group(dynamic(*({"field": 5, "op": "equals", "value": v} for v in (True, 1, 1.5, "x"))))
    assert [c.value for c in spec.conditions] == ["true", "1", "1.5", "x"]
