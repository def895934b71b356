"""Which contact an API event belongs to (``event_identity`` + ``route_event``): pure, no store, no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from stitcher.domain.errors import ContactNotFound, ValidationFailed
from stitcher.domain.identifiers import IdentifierKind, Identity, Normaliser
from stitcher.domain.rules import Candidate, Lookup, event_identity, route_event

EMAIL, SMS, MOBILEPUSH, WEBPUSH = (
    IdentifierKind.EMAIL, IdentifierKind.SMS, IdentifierKind.MOBILEPUSH, IdentifierKind.WEBPUSH,
)
N = Normaliser()


def who(params: list[tuple[str, Any]], key_value: Any = None) -> Identity:
    return event_identity(params, key_value, N)


def contact(id: int, ext: str | None = None, *, deleted: bool = False, at: float = 100.0) -> Candidate:
    return Candidate(id=id, external_id=ext, deleted=deleted, updated_at=at)


def test_params_named_as_the_platform_clients_send_them() -> None:
    identity = who([("EmailAddress", "Ann@Example.com"), ("phone", "+380671234567"), ("pushToken", "tok"),
                    ("externalCustomerId", 42), ("contactId", "7"), ("productId", "p-1")])
    assert identity.contact_id == 7
    assert identity.external_id == "42"
    assert identity.channels == ((EMAIL, "ann@example.com"), (SMS, "+380671234567"), (MOBILEPUSH, "tok"),
                                 (WEBPUSH, "tok"))


def test_param_names_are_case_insensitive_and_the_first_of_a_kind_counts() -> None:
    identity = who([("EXTERNALCUSTOMERID", "C-1"), ("externalCustomerId", "C-2"), ("email", "a@example.com"),
                    ("Email", "b@example.com")])
    assert identity.external_id == "C-1"
    assert identity.values(EMAIL) == ("a@example.com", "b@example.com")


@pytest.mark.parametrize("blank", ["", "  ", "null", "undefined", "0", None])
def test_blank_or_placeholder_identifier_params_are_ignored(blank: Any) -> None:
    identity = who([("externalCustomerId", blank), ("email", "a@example.com")])
    assert identity.external_id is None and identity.values(EMAIL) == ("a@example.com",)


def test_a_malformed_identifier_param_is_named_by_its_index() -> None:
    with pytest.raises(ValidationFailed) as exc:
        who([("productId", 1), ("email", "not-an-email"), ("contactId", "x")])
    assert [e["field"] for e in exc.value.errors] == ["params[1].value", "params[2].value"]


@pytest.mark.parametrize(("key_value", "expected"), [
    ("Ann@Example.com", Identity(channels=((EMAIL, "ann@example.com"),))),
    ("+380671234567", Identity(channels=((SMS, "+380671234567"),))),
    ("00380671234567", Identity(channels=((SMS, "+380671234567"),))),
    ("C-10091", Identity(external_id="C-10091")),
    ("12345", Identity(external_id="12345")),  # digits are an external ID, never a contactId
    (12345, Identity(external_id="12345")),
])
def test_key_value_is_read_by_its_shape_when_no_param_names_anyone(key_value: Any, expected: Identity) -> None:
    assert who([("productId", "p")], key_value) == expected


def test_params_outrank_the_key_value() -> None:
    assert who([("email", "a@example.com")], "C-1") == Identity(channels=((EMAIL, "a@example.com"),))


def test_a_malformed_key_value_is_a_400_naming_it() -> None:
    with pytest.raises(ValidationFailed) as exc:
        who([], "not@an@email")
    assert exc.value.errors[0]["field"] == "keyValue"


def test_an_event_naming_nobody_is_refused() -> None:
    with pytest.raises(ValidationFailed) as exc:
        who([("productId", "1")], "  ")
    assert exc.value.errors[0]["field"] == "keyValue"


def test_contact_id_outranks_everything() -> None:
    found = Lookup(by_contact_id=contact(1), by_external_id=contact(2, "X"),
                   by_channel={(EMAIL, "a"): (contact(3),)})
    route = route_event(Identity(contact_id=1, external_id="X", channels=((EMAIL, "a"),)), found)
    assert (route.contact_id, route.found_by) == (1, "contactId")


def test_a_merged_contact_id_routes_to_the_contact_it_was_merged_into() -> None:
    """The store puts the survivor of a merge in ``by_contact_id``; the event goes there, before any other
    identifier, and says it was found by contactId."""
    found = Lookup(by_contact_id=contact(5, "S-1"), by_channel={(EMAIL, "a"): (contact(3),)})
    route = route_event(Identity(contact_id=4, channels=((EMAIL, "a"),)), found)
    assert (route.contact_id, route.found_by) == (5, "contactId")


def test_unknown_contact_id_falls_through_to_the_next_identifier() -> None:
    found = Lookup(by_external_id=contact(2, "X"))
    assert route_event(Identity(contact_id=9, external_id="X"), found).contact_id == 2


def test_an_unknown_contact_id_alone_is_not_found_never_held() -> None:
    with pytest.raises(ContactNotFound):
        route_event(Identity(contact_id=9), Lookup())


def test_external_id_outranks_channels_and_finds_a_deleted_contact() -> None:
    found = Lookup(by_external_id=contact(2, "X", deleted=True), by_channel={(EMAIL, "a"): (contact(3),)})
    route = route_event(Identity(external_id="X", channels=((EMAIL, "a"),)), found)
    assert (route.contact_id, route.found_by) == (2, "externalCustomerId")


def test_email_outranks_phone_outranks_push() -> None:
    identity = Identity(channels=((EMAIL, "a"), (SMS, "+1"), (MOBILEPUSH, "t"), (WEBPUSH, "t")))
    assert route_event(identity, Lookup(by_channel={(SMS, "+1"): (contact(4),),
                                                    (WEBPUSH, "t"): (contact(5),)})).contact_id == 4
    assert route_event(identity, Lookup(by_channel={(WEBPUSH, "t"): (contact(5),)})).found_by == "webpush"


def test_a_shared_identifier_means_the_contact_choose_picks() -> None:
    shared = (contact(1, "A", at=300), contact(2, None, at=100), contact(3, "B", at=200))
    assert route_event(Identity(channels=((EMAIL, "a"),)), Lookup(by_channel={(EMAIL, "a"): shared})).contact_id == 2
    identified = (contact(1, "A", at=100), contact(3, "B", at=200))
    assert route_event(Identity(channels=((EMAIL, "a"),)),
                       Lookup(by_channel={(EMAIL, "a"): identified})).contact_id == 3


def test_never_onto_another_customer_s_contact() -> None:
    """An event about customer X found by an email that only customer Y holds waits for X."""
    found = Lookup(by_channel={(EMAIL, "a"): (contact(1, "Y"),)})
    route = route_event(Identity(external_id="X", channels=((EMAIL, "a"),)), found)
    assert route.contact_id is None and route.hold == Identity(external_id="X")
    # an unidentified profile with that email is this person's
    found = Lookup(by_channel={(EMAIL, "a"): (contact(1, "Y"), contact(2))})
    assert route_event(Identity(external_id="X", channels=((EMAIL, "a"),)), found).contact_id == 2


@pytest.mark.parametrize(("identity", "hold"), [
    (Identity(contact_id=5, external_id="X", channels=((EMAIL, "a"),)), Identity(external_id="X")),
    (Identity(channels=((EMAIL, "a"), (SMS, "+1"))), Identity(channels=((EMAIL, "a"),))),
    (Identity(channels=((SMS, "+1"), (MOBILEPUSH, "t"), (WEBPUSH, "t"))), Identity(channels=((SMS, "+1"),))),
    (Identity(channels=((MOBILEPUSH, "t"), (WEBPUSH, "t"))), Identity(channels=((MOBILEPUSH, "t"),))),
])
def test_unknown_person_is_held_under_its_highest_priority_identifier(identity: Identity, hold: Identity) -> None:
    route = route_event(identity, Lookup())
    assert route.contact_id is None and route.hold == hold
