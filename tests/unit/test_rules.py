"""Identity decisions (SPEC §1/§3, DESIGN merge policy) as pure functions: no store, no I/O."""

from __future__ import annotations

import pytest

from stitcher.domain.errors import ContactNotFound, ExternalIdConflict
from stitcher.domain.identifiers import IdentifierKind, Identity
from stitcher.domain.rules import (
    Action,
    Candidate,
    Decision,
    Lookup,
    Mode,
    choose,
    decide,
    lookup_kinds,
    ranked,
)

EMAIL, SMS, MOBILEPUSH, WEBPUSH = (
    IdentifierKind.EMAIL, IdentifierKind.SMS, IdentifierKind.MOBILEPUSH, IdentifierKind.WEBPUSH,
)
ANN = (EMAIL, "ann@example.com")
PHONE = (SMS, "+380671234567")
TOKEN = (MOBILEPUSH, "tok-1")
WEB = (WEBPUSH, "wp-1")


def contact(id: int, ext: str | None = None, *, deleted: bool = False, at: float = 100.0) -> Candidate:
    return Candidate(id=id, external_id=ext, deleted=deleted, updated_at=at)


def ident(
    *channels: tuple[IdentifierKind, str], ext: str | None = None, contact_id: int | None = None,
) -> Identity:
    return Identity(contact_id=contact_id, external_id=ext, channels=tuple(channels))


def lookup(
    by_contact_id: Candidate | None = None,
    by_external_id: Candidate | None = None,
    **by_kind: list[tuple[str, list[Candidate]]],
) -> Lookup:
    channels = {
        (IdentifierKind(kind), value): tuple(cands)
        for kind, pairs in by_kind.items()
        for value, cands in pairs
    }
    return Lookup(by_contact_id=by_contact_id, by_external_id=by_external_id, by_channel=channels)


# --- choosing among several candidates -----------------------------------------------------------------


def test_choose_prefers_contact_without_external_id() -> None:
    """Among contacts sharing an identifier, the one without an external ID is chosen, even if older."""
    assert choose([contact(1, "E1", at=900), contact(2, None, at=10), contact(3, "E3", at=800)]) == contact(
        2, None, at=10,
    )


def test_choose_most_recently_updated_when_all_identified() -> None:
    """When every candidate has an external ID, the most recently updated is chosen."""
    assert choose([contact(1, "E1", at=10), contact(2, "E2", at=30), contact(3, "E3", at=20)]) == contact(
        2, "E2", at=30,
    )


def test_choose_ties_go_to_higher_id() -> None:
    """Equal update times are broken by the higher id."""
    assert choose([contact(4, at=5), contact(9, at=5), contact(7, at=5)]) == contact(9, at=5)


def test_choose_skips_deleted_and_empty() -> None:
    """Deleted candidates are never chosen; no live candidate means None."""
    assert choose([contact(1, deleted=True, at=999), contact(2, "E2", at=1)]) == contact(2, "E2", at=1)
    assert choose([contact(1, deleted=True)]) is None
    assert choose([]) is None


def test_ranked_orders_best_first() -> None:
    """ranked gives unidentified contacts (newest first) before identified ones (newest first)."""
    order = ranked([contact(1, "E", at=50), contact(2, at=10), contact(3, at=20), contact(4, "F", at=60)])
    assert [c.id for c in order] == [3, 2, 4, 1]


def test_lookup_kinds_per_mode() -> None:
    """Add/update and subscribe find by every channel (email, phone, then tokens), PUT by none."""
    assert lookup_kinds(Mode.ADD_UPDATE) == (EMAIL, SMS, MOBILEPUSH, WEBPUSH)
    assert lookup_kinds(Mode.SUBSCRIBE) == (EMAIL, SMS, MOBILEPUSH, WEBPUSH)
    assert lookup_kinds(Mode.UPDATE) == ()


def test_decision_merged_property() -> None:
    """Decision.merged says whether anything is folded into the target."""
    assert Decision(Action.UPDATE, 1, merge=(2,)).merged
    assert not Decision(Action.UPDATE, 1).merged


# --- Example 1 and add/update with an external ID -------------------------------------------------------


def test_example1_token_contact_gains_external_id() -> None:
    """Example 1: the app's token-only contact is updated and given the ID; no new contact."""
    app = contact(5)
    found = lookup(
        mobilepush=[("tok-1", [app])], email=[("ann@example.com", [])], sms=[("+380671234567", [])],
    )
    decision = decide(Mode.ADD_UPDATE, ident(ANN, PHONE, TOKEN, ext="C-1"), found)
    assert decision == Decision(Action.UPDATE, 5, set_external_id="C-1", merge=(), found_by="mobilepush")


def test_example1_first_post_with_only_a_token_creates() -> None:
    """Example 1, step one: a token that finds nobody creates a contact."""
    assert decide(Mode.ADD_UPDATE, ident(TOKEN), lookup()) == Decision(Action.CREATE, None)


def test_live_holder_of_external_id_is_updated() -> None:
    """A live contact holding the external ID is updated and its ID left as it is."""
    holder = contact(3, "C-1")
    decision = decide(Mode.ADD_UPDATE, ident(ANN, ext="C-1"), lookup(by_external_id=holder))
    assert decision == Decision(Action.UPDATE, 3, None, (), "externalCustomerId")


def test_deleted_holder_of_external_id_is_restored() -> None:
    """A soft-deleted contact holding the external ID is restored, not duplicated."""
    gone = contact(3, "C-1", deleted=True)
    decision = decide(Mode.ADD_UPDATE, ident(ANN, ext="C-1"), lookup(by_external_id=gone))
    assert decision == Decision(Action.RESTORE, 3, None, (), "externalCustomerId")


def test_external_id_outranks_email() -> None:
    """The external ID decides even when the email finds another, unidentified contact — which is merged."""
    holder = contact(3, "C-1")
    other = contact(8)
    decision = decide(
        Mode.ADD_UPDATE,
        ident(ANN, ext="C-1"),
        lookup(by_external_id=holder, email=[("ann@example.com", [other])]),
    )
    assert decision == Decision(Action.UPDATE, 3, None, (8,), "externalCustomerId")


def test_restore_merges_unidentified_matches() -> None:
    """Restoring by external ID also folds in unidentified contacts the channels found."""
    gone = contact(3, "C-1", deleted=True)
    decision = decide(
        Mode.ADD_UPDATE,
        ident(TOKEN, ext="C-1"),
        lookup(by_external_id=gone, mobilepush=[("tok-1", [contact(4)])]),
    )
    assert decision == Decision(Action.RESTORE, 3, None, (4,), "externalCustomerId")


def test_new_external_id_with_nothing_found_creates() -> None:
    """An unknown external ID with identifiers that find nobody creates a contact with that ID."""
    decision = decide(Mode.ADD_UPDATE, ident(ANN, PHONE, ext="C-1"), lookup())
    assert decision == Decision(Action.CREATE, None, set_external_id="C-1")


def test_two_external_ids_never_merged() -> None:
    """A request with E2 whose email belongs to E1's contact creates a new contact; nothing merges, no 409."""
    e1 = contact(1, "E1")
    decision = decide(Mode.ADD_UPDATE, ident(ANN, ext="E2"), lookup(email=[("ann@example.com", [e1])]))
    assert decision == Decision(Action.CREATE, None, set_external_id="E2", merge=())


def test_identified_contacts_never_taken_over_lower_identifier_decides() -> None:
    """With E, an email held only by another person is skipped; the unidentified phone contact gets E."""
    e1 = contact(1, "E1", at=500)
    anon = contact(2, at=1)
    found = lookup(email=[("ann@example.com", [e1])], sms=[("+380671234567", [anon])])
    decision = decide(Mode.ADD_UPDATE, ident(ANN, PHONE, ext="E2"), found)
    assert decision == Decision(Action.UPDATE, 2, "E2", (), "sms")


def test_highest_priority_unidentified_identifier_decides_and_others_merge() -> None:
    """With E, the email's unidentified contact wins; the phone's, token's and webpush's merge in order."""
    by_email, by_phone, by_token, by_web = contact(10), contact(20), contact(30), contact(40)
    found = lookup(
        email=[("ann@example.com", [by_email])],
        sms=[("+380671234567", [by_phone])],
        mobilepush=[("tok-1", [by_token])],
        webpush=[("wp-1", [by_web])],
    )
    decision = decide(Mode.ADD_UPDATE, ident(WEB, TOKEN, PHONE, ANN, ext="C-1"), found)
    assert decision == Decision(Action.UPDATE, 10, "C-1", (20, 30, 40), "email")


def test_shared_email_with_external_id_takes_the_unidentified_one() -> None:
    """With E, an email shared by several contacts gives E to the unidentified one."""
    family = [contact(1, "E1", at=900), contact(2, at=100), contact(3, "E3", at=800)]
    decision = decide(Mode.ADD_UPDATE, ident(ANN, ext="E2"), lookup(email=[("ann@example.com", family)]))
    assert decision == Decision(Action.UPDATE, 2, "E2", (), "email")


def test_identified_contacts_found_by_channels_never_merged() -> None:
    """Contacts with other external IDs found by any channel are left alone."""
    holder = contact(1, "C-1")
    found = lookup(
        by_external_id=holder,
        email=[("ann@example.com", [contact(2, "E2"), contact(3)])],
        mobilepush=[("tok-1", [contact(4, "E4")])],
    )
    decision = decide(Mode.ADD_UPDATE, ident(ANN, TOKEN, ext="C-1"), found)
    assert decision == Decision(Action.UPDATE, 1, None, (3,), "externalCustomerId")


# --- add/update without an external ID ------------------------------------------------------------------


def test_without_external_id_email_outranks_phone_and_token() -> None:
    """Without E, the email's contact is updated; unidentified phone/token contacts merge into it."""
    found = lookup(
        email=[("ann@example.com", [contact(1)])],
        sms=[("+380671234567", [contact(2)])],
        mobilepush=[("tok-1", [contact(3)])],
    )
    decision = decide(Mode.ADD_UPDATE, ident(TOKEN, PHONE, ANN), found)
    assert decision == Decision(Action.UPDATE, 1, None, (2, 3), "email")


def test_without_external_id_phone_then_push_then_webpush() -> None:
    """Without E, phone decides when email finds nobody, then mobilepush, then webpush."""
    assert decide(
        Mode.ADD_UPDATE, ident(ANN, PHONE, TOKEN), lookup(sms=[("+380671234567", [contact(2)])]),
    ).found_by == "sms"
    assert decide(
        Mode.ADD_UPDATE,
        ident(ANN, TOKEN, WEB),
        lookup(mobilepush=[("tok-1", [contact(3)])], webpush=[("wp-1", [])]),
    ) == Decision(Action.UPDATE, 3, None, (), "mobilepush")
    assert decide(Mode.ADD_UPDATE, ident(WEB), lookup(webpush=[("wp-1", [contact(4)])])) == Decision(
        Action.UPDATE, 4, None, (), "webpush",
    )


def test_without_external_id_nothing_found_creates() -> None:
    """Without E and no match, a contact is created."""
    decision = decide(Mode.ADD_UPDATE, ident(ANN, PHONE), lookup())
    assert decision == Decision(Action.CREATE, None, None, (), None)


def test_without_external_id_shared_email_prefers_unidentified() -> None:
    """Without E, an email shared by several contacts updates the one without an external ID."""
    family = [contact(1, "E1", at=900), contact(2, at=100)]
    decision = decide(Mode.ADD_UPDATE, ident(ANN), lookup(email=[("ann@example.com", family)]))
    assert decision == Decision(Action.UPDATE, 2, None, (), "email")


def test_without_external_id_shared_email_most_recent_identified() -> None:
    """Without E, an email held only by identified contacts updates the most recently updated one."""
    family = [contact(1, "E1", at=100), contact(2, "E2", at=300), contact(3, "E3", at=200)]
    decision = decide(Mode.ADD_UPDATE, ident(ANN), lookup(email=[("ann@example.com", family)]))
    assert decision == Decision(Action.UPDATE, 2, None, (), "email")


def test_without_external_id_unidentified_merged_into_identified_target() -> None:
    """Without E, an unidentified token contact merges into the identified contact the email found."""
    found = lookup(email=[("ann@example.com", [contact(1, "E1")])], mobilepush=[("tok-1", [contact(5)])])
    decision = decide(Mode.ADD_UPDATE, ident(ANN, TOKEN), found)
    assert decision == Decision(Action.UPDATE, 1, None, (5,), "email")


def test_several_unidentified_for_one_identifier_newest_is_target_rest_merge() -> None:
    """Several unidentified contacts on one email: the newest is the target, the others merge into it."""
    found = lookup(email=[("ann@example.com", [contact(1, at=10), contact(2, at=30), contact(3, at=20)])])
    decision = decide(Mode.ADD_UPDATE, ident(ANN), found)
    assert decision == Decision(Action.UPDATE, 2, None, (3, 1), "email")


def test_merge_lists_each_contact_once() -> None:
    """A contact found by several identifiers appears once in the merge list."""
    shared = contact(7)
    found = lookup(
        email=[("ann@example.com", [contact(1)])],
        sms=[("+380671234567", [shared])],
        mobilepush=[("tok-1", [shared])],
    )
    assert decide(Mode.ADD_UPDATE, ident(ANN, PHONE, TOKEN), found).merge == (7,)


def test_several_values_of_one_kind_in_request_order() -> None:
    """With two emails, the first email in the request decides."""
    found = lookup(email=[("b@example.com", [contact(2)]), ("a@example.com", [contact(1)])])
    decision = decide(Mode.ADD_UPDATE, ident((EMAIL, "a@example.com"), (EMAIL, "b@example.com")), found)
    assert decision == Decision(Action.UPDATE, 1, None, (2,), "email")


def test_deleted_channel_candidates_ignored() -> None:
    """A deleted contact coming from a channel lookup neither decides nor merges."""
    found = lookup(
        email=[("ann@example.com", [contact(1, deleted=True, at=999)])], sms=[("+380671234567", [])],
    )
    assert decide(Mode.ADD_UPDATE, ident(ANN, PHONE), found) == Decision(Action.CREATE, None)


# --- subscribe ------------------------------------------------------------------------------------------


def test_subscribe_falls_back_to_push_tokens() -> None:
    """Subscribe finds by external ID, email and phone first, then by push token: a repeated token-only
    subscribe finds its contact, and a token-only profile is given the ID (Example 1)."""
    found = lookup(mobilepush=[("tok-1", [contact(5)])], webpush=[("wp-1", [contact(6)])])
    assert decide(Mode.SUBSCRIBE, ident(TOKEN), found) == Decision(Action.UPDATE, 5, None, (), "mobilepush")
    assert decide(Mode.SUBSCRIBE, ident(TOKEN, WEB, ext="C-1"), found) == Decision(
        Action.UPDATE, 5, "C-1", (6,), "mobilepush")
    identified = lookup(mobilepush=[("tok-1", [contact(5, "C-9")])])
    assert decide(Mode.SUBSCRIBE, ident(TOKEN, ext="C-1"), identified) == Decision(Action.CREATE, None, "C-1")


def test_subscribe_finds_by_email_then_phone_before_tokens() -> None:
    """Subscribe updates the contact found by email, else by phone, giving it the ID; an unidentified token
    profile of the same request is folded into it."""
    found = lookup(sms=[("+380671234567", [contact(2)])], mobilepush=[("tok-1", [contact(5)])])
    decision = decide(Mode.SUBSCRIBE, ident(ANN, PHONE, TOKEN, ext="C-1"), found)
    assert decision == Decision(Action.UPDATE, 2, "C-1", (5,), "sms")


def test_subscribe_by_external_id() -> None:
    """Subscribe with a known external ID updates its holder; repeating the request decides the same."""
    holder = contact(3, "C-1")
    request = ident(ANN, ext="C-1")
    found = lookup(by_external_id=holder, email=[("ann@example.com", [holder])])
    assert decide(Mode.SUBSCRIBE, request, found) == decide(Mode.SUBSCRIBE, request, found)
    expected = Decision(Action.UPDATE, 3, None, (), "externalCustomerId")
    assert decide(Mode.SUBSCRIBE, request, found) == expected


def test_subscribe_restores_deleted_holder() -> None:
    """Subscribe with the external ID of a deleted contact restores it."""
    found = lookup(by_external_id=contact(3, "C-1", deleted=True))
    decision = decide(Mode.SUBSCRIBE, ident(ext="C-1"), found)
    assert decision.action is Action.RESTORE and decision.target == 3


# --- contactId and PUT ----------------------------------------------------------------------------------


def test_update_sets_external_id_on_named_contact() -> None:
    """PUT gives the named contact the request's external ID when nobody holds it."""
    target = contact(42)
    decision = decide(Mode.UPDATE, ident(ANN, ext="C-1", contact_id=42), lookup(by_contact_id=target))
    assert decision == Decision(Action.UPDATE, 42, "C-1", (), "contactId")


def test_update_keeps_own_external_id() -> None:
    """PUT with the contact's own external ID changes nothing about it."""
    target = contact(42, "C-1")
    found = lookup(by_contact_id=target, by_external_id=target)
    assert decide(Mode.UPDATE, ident(ext="C-1", contact_id=42), found) == Decision(
        Action.UPDATE, 42, None, (), "contactId",
    )


def test_update_replaces_a_different_external_id() -> None:
    """PUT with a free external ID different from the contact's gives it the new one."""
    found = lookup(by_contact_id=contact(42, "OLD"))
    assert decide(Mode.UPDATE, ident(ext="NEW", contact_id=42), found).set_external_id == "NEW"


@pytest.mark.parametrize("holder", [contact(7, "C-1"), contact(7, "C-1", deleted=True)])
def test_update_with_foreign_external_id_conflicts(holder: Candidate) -> None:
    """PUT with an external ID held by another contact, live or deleted, is a 409 naming the holder."""
    found = lookup(by_contact_id=contact(42), by_external_id=holder)
    with pytest.raises(ExternalIdConflict) as info:
        decide(Mode.UPDATE, ident(ext="C-1", contact_id=42), found)
    assert (info.value.external_id, info.value.holder_id, info.value.target_id) == ("C-1", 7, 42)
    assert info.value.code == "identity_conflict"


@pytest.mark.parametrize("target", [None, contact(42, deleted=True)])
def test_update_of_unknown_or_deleted_contact_not_found(target: Candidate | None) -> None:
    """PUT of a contact that does not exist or is deleted is ContactNotFound (404)."""
    with pytest.raises(ContactNotFound) as info:
        decide(Mode.UPDATE, ident(ANN, contact_id=42), lookup(by_contact_id=target))
    assert info.value.contact_id == 42
    assert info.value.code == "contact_not_found"


def test_update_without_contact_id_not_found() -> None:
    """PUT without a contact id cannot find anyone."""
    with pytest.raises(ContactNotFound):
        decide(Mode.UPDATE, ident(ANN), lookup(email=[("ann@example.com", [contact(1)])]))


def test_update_never_merges() -> None:
    """PUT only updates the named contact, even when its channels find unidentified contacts."""
    found = lookup(by_contact_id=contact(42), email=[("ann@example.com", [contact(5)])])
    decision = decide(Mode.UPDATE, ident(ANN, contact_id=42), found)
    assert decision == Decision(Action.UPDATE, 42, None, (), "contactId")


@pytest.mark.parametrize("mode", [Mode.ADD_UPDATE, Mode.SUBSCRIBE])
def test_contact_id_outranks_everything(mode: Mode) -> None:
    """contactId decides over the external ID's absence and every channel; unidentified matches merge in."""
    found = lookup(
        by_contact_id=contact(42, at=1),
        email=[("ann@example.com", [contact(5, at=999)])],
        sms=[("+380671234567", [contact(6, "E6")])],
    )
    decision = decide(mode, ident(ANN, PHONE, ext="C-1", contact_id=42), found)
    assert decision == Decision(Action.UPDATE, 42, "C-1", (5,), "contactId")


@pytest.mark.parametrize("mode", [Mode.ADD_UPDATE, Mode.SUBSCRIBE])
def test_contact_id_with_foreign_external_id_conflicts(mode: Mode) -> None:
    """With contactId, an external ID held by another contact is a 409 in add/update and subscribe too."""
    found = lookup(by_contact_id=contact(42), by_external_id=contact(7, "C-1"))
    with pytest.raises(ExternalIdConflict) as info:
        decide(mode, ident(ext="C-1", contact_id=42), found)
    assert info.value.holder_id == 7


@pytest.mark.parametrize("mode", [Mode.ADD_UPDATE, Mode.SUBSCRIBE])
def test_contact_id_unknown_not_found_in_every_mode(mode: Mode) -> None:
    """A named contactId that does not exist is ContactNotFound, never a silent create."""
    with pytest.raises(ContactNotFound):
        decide(mode, ident(ANN, contact_id=42), lookup())
