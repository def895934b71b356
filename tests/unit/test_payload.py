"""Reading contact and subscribe bodies as the platform's clients send them: pure, no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from stitcher.domain.errors import ValidationFailed
from stitcher.domain.identifiers import IdentifierKind, Normaliser
from stitcher.payload import parse_contact, parse_subscribe

N = Normaliser()
EXT = {"externalCustomerId": "C-1"}


@pytest.mark.parametrize(("groups", "names"), [
    (["News", " Offers "], ("News", "Offers")),
    ([{"name": "News", "type": "Static", "types": ["Static", "Dynamic"]}, {"id": 3, "name": "VIP"}], ("News", "VIP")),
    ({"name": "Solo"}, ("Solo",)),
    (["News", {"name": "News"}], ("News",)),
    (None, ()),
])
def test_contact_groups_in_every_shape(groups: Any, names: tuple[str, ...]) -> None:
    """Names, group objects (extra keys ignored) or one object alone give the same names, once each."""
    assert parse_contact({**EXT, "groups": groups}, N).groups == names


def test_a_group_without_a_usable_name_is_taken_by_its_id_or_ignored_and_named() -> None:
    """An object without a usable name is taken by its id (resolved later, ``group_refs``); one without a
    usable id either, or a blank name, is listed, not refused."""
    command = parse_contact({**EXT, "groups": [{"id": 4}, " ", "Kept", {"id": "12", "name": ""}, {"type": "x"},
                                               {"id": 0}, {"id": "x"}, {"id": True}, {"id": [1]}, {"id": 4},
                                               {"id": 2**70}]}, N, prefix="contact.")
    assert command.groups == ("Kept",)
    assert command.group_ids == ((4, "contact.groups[0].id"), (12, "contact.groups[3].id"),
                                 (4, "contact.groups[9].id"))
    assert command.ignored == (
        {"field": "contact.groups[1]", "reason": "blank"},
        {"field": "contact.groups[4].name", "reason": "missing"},
        {"field": "contact.groups[5].id", "reason": "not a group id"},
        {"field": "contact.groups[6].id", "reason": "not a group id"},
        {"field": "contact.groups[7].id", "reason": "not a group id"},
        {"field": "contact.groups[8].id", "reason": "not a group id"},
        {"field": "contact.groups[10].id", "reason": "not a group id"},
    )


@pytest.mark.parametrize(("groups", "field"), [
    ("News", "groups"), ([1], "groups[0]"), ([{"name": 5}], "groups[0].name"), (["n" * 257], "groups[0]"),
    ([f"g{i}" for i in range(101)], "groups"),
])
def test_a_malformed_group_is_a_400_naming_it(groups: Any, field: str) -> None:
    """A group name that is not 1-256 characters of text, or groups that are not a list, are errors."""
    with pytest.raises(ValidationFailed) as info:
        parse_contact({**EXT, "groups": groups}, N)
    assert [e["field"] for e in info.value.errors] == [field]


def test_a_device_object_is_kept_as_json_and_a_string_as_itself() -> None:
    """Both spellings of a device reach the stored channel; the stored-only messenger channels too."""
    command = parse_contact({"channels": [
        {"type": "mobilepush", "value": "tok", "device": {"appId": "a-1", "os": "Android"}},
        {"type": "webpush", "value": "wp", "device": "Chrome"},
        {"type": "viber", "value": 380671234567},
    ]}, N)
    assert command.channels() == [
        (IdentifierKind.MOBILEPUSH, "tok", '{"appId":"a-1","os":"Android"}'),
        (IdentifierKind.WEBPUSH, "wp", "Chrome"),
        (IdentifierKind.VIBER, "380671234567", None),
    ]


def test_nothing_identifying_names_what_was_ignored() -> None:
    """When every identifier was blank or a placeholder, the 400 names each of them and says so."""
    with pytest.raises(ValidationFailed) as info:
        parse_contact({"externalCustomerId": 0, "channels": {"type": "sms", "value": " "}}, N)
    assert [e["field"] for e in info.value.errors] == ["externalCustomerId", "channels[0].value"]
    assert all("ignored" in e["message"] for e in info.value.errors)


def test_only_messenger_channels_identify_no_one() -> None:
    """viber and telegram alone are a 400: they are stored, never used to find the person."""
    with pytest.raises(ValidationFailed) as info:
        parse_contact({"channels": [{"type": "telegram", "value": "42"}]}, N)
    assert [e["field"] for e in info.value.errors] == ["channels"]


def test_subscribe_takes_group_objects_and_reports_what_it_ignored() -> None:
    """Subscribe's top-level groups take the contact's shapes; what either ignored is on the contact."""
    sub = parse_subscribe({"contact": {**EXT, "groups": {"name": "Inner"}, "addressBookId": 1, "contactKey": "k"},
                           "groups": [{"name": "Outer"}, {"id": 9}], "dedupeOn": "email", "fields": []}, N)
    assert sub.contact.groups == ("Inner",) and sub.groups == ("Outer",) and sub.group_ids == ((9, "groups[1].id"),)
    assert sub.contact.ignored == ()
