"""Bulk-import matching (SPEC §3, ``POST /api/v1/contacts``) as pure functions: rows + candidates → decisions."""

from __future__ import annotations

from stitcher.domain.identifiers import IdentifierKind, Identity
from stitcher.domain.rules import (
    Action,
    Candidate,
    DedupeOn,
    ImportLookup,
    ImportRow,
    RowDecision,
    dedupe_keys,
    plan_import,
)

EMAIL, SMS = IdentifierKind.EMAIL, IdentifierKind.SMS
NOW = 1_000_000.0


def contact(id: int, ext: str | None = None, *, deleted: bool = False, at: float = 100.0) -> Candidate:
    return Candidate(id=id, external_id=ext, deleted=deleted, updated_at=at)


def row(*channels: tuple[IdentifierKind, str], ext: str | None = None, contact_id: int | None = None,
        on: DedupeOn = DedupeOn.EMAIL, field: str | None = None) -> ImportRow:
    identity = Identity(contact_id=contact_id, external_id=ext, channels=tuple(channels))
    return ImportRow(identity, dedupe_keys(on, identity, "7", field))


def plan(rows: list[ImportRow], *, ext: dict[str, Candidate] | None = None,
         keys: dict[str, list[Candidate]] | None = None, on: DedupeOn = DedupeOn.EMAIL,
         restore: bool = False) -> list[RowDecision]:
    found = ImportLookup(ext or {}, {k: tuple(v) for k, v in (keys or {}).items()})
    return plan_import(rows, found, dedupe_on=on, restore_deleted=restore, now=NOW)


ANN = (EMAIL, "ann@example.com")


def test_dedupe_keys_per_kind() -> None:
    """Each dedupeOn names the keys a row is matched on, spelt as identity keys, email before sms."""
    ident = Identity(contact_id=5, external_id="E", channels=(ANN, (SMS, "+380671234567")))
    assert dedupe_keys(DedupeOn.EMAIL, ident) == ("email:ann@example.com",)
    assert dedupe_keys(DedupeOn.SMS, ident) == ("sms:+380671234567",)
    assert dedupe_keys(DedupeOn.EMAIL_OR_SMS, ident) == ("email:ann@example.com", "sms:+380671234567")
    assert dedupe_keys(DedupeOn.EXTERNAL_ID, ident) == ()
    assert dedupe_keys(DedupeOn.ID, ident) == ("id:5",)
    assert dedupe_keys(DedupeOn.MOBILEPUSH, ident) == ()
    assert dedupe_keys(DedupeOn.FIELD, ident, "7", "gold") == ("field:7:gold",)
    assert dedupe_keys(DedupeOn.FIELD, ident, "7", None) == ()


def test_nothing_found_creates() -> None:
    """A row that matches nobody creates a contact, with its external ID."""
    assert plan([row(ANN, ext="E1")]) == [RowDecision(Action.CREATE, -1, "E1")]


def test_own_external_id_decides_first() -> None:
    """The holder of the row's external ID is updated even when the email points at another contact."""
    d = plan([row(ANN, ext="E1")], ext={"E1": contact(1, "E1")}, keys={"email:ann@example.com": [contact(2)]})
    assert d == [RowDecision(Action.UPDATE, 1, None, "externalCustomerId")]


def test_email_match_without_external_id_gets_the_rows_id() -> None:
    """An email match without an external ID is updated and given the row's ID."""
    d = plan([row(ANN, ext="E1")], keys={"email:ann@example.com": [contact(2)]})
    assert d == [RowDecision(Action.UPDATE, 2, "E1", "email")]


def test_shared_email_prefers_the_unidentified_contact() -> None:
    """Several contacts share the email: the one without an external ID gets the row's ID, even if older."""
    shared = [contact(1, "E9", at=900), contact(2, None, at=10), contact(3, "E8", at=800)]
    assert plan([row(ANN, ext="E1")], keys={"email:ann@example.com": shared})[0].target == 2


def test_shared_email_without_row_id_takes_the_most_recently_updated() -> None:
    """Without an external ID in the row and every match identified, the most recently updated is updated."""
    shared = [contact(1, "E9", at=900), contact(3, "E8", at=950)]
    d = plan([row(ANN)], keys={"email:ann@example.com": shared})
    assert d == [RowDecision(Action.UPDATE, 3, None, "email")]


def test_every_match_holding_another_id_creates_a_new_contact() -> None:
    """An external ID is never stolen: if every email match holds another ID, a new contact is made."""
    shared = [contact(1, "E9"), contact(3, "E8")]
    assert plan([row(ANN, ext="E1")], keys={"email:ann@example.com": shared}) == [
        RowDecision(Action.CREATE, -1, "E1")]


def test_deleted_match_is_skipped_without_restore_deleted() -> None:
    """A deleted match is skipped (reported) unless restoreDeleted."""
    d = plan([row(ANN)], keys={"email:ann@example.com": [contact(4, deleted=True)]})
    assert d[0].action is Action.SKIP and d[0].target == 4 and "deleted" in (d[0].reason or "")


def test_deleted_match_is_restored_with_restore_deleted() -> None:
    """With restoreDeleted the deleted match is restored (and given the row's external ID)."""
    d = plan([row(ANN, ext="E1")], keys={"email:ann@example.com": [contact(4, deleted=True)]}, restore=True)
    assert d == [RowDecision(Action.RESTORE, 4, "E1", "email")]


def test_deleted_holder_of_external_id_skipped_or_restored() -> None:
    """The deleted holder of the row's ID is skipped by default and restored with restoreDeleted."""
    holder = {"E1": contact(4, "E1", deleted=True)}
    assert plan([row(ANN, ext="E1")], ext=holder)[0].action is Action.SKIP
    assert plan([row(ANN, ext="E1")], ext=holder, restore=True) == [
        RowDecision(Action.RESTORE, 4, None, "externalCustomerId")]


def test_live_match_wins_over_a_deleted_one() -> None:
    """A live match is updated even when a deleted contact shares the email."""
    cands = [contact(4, deleted=True, at=999), contact(5, at=1)]
    assert plan([row(ANN)], keys={"email:ann@example.com": cands})[0] == RowDecision(Action.UPDATE, 5, None, "email")


def test_duplicate_rows_by_external_id_become_one_contact() -> None:
    """Two rows with the same new external ID: the first creates, the second updates that contact."""
    d = plan([row(ANN, ext="E1"), row((EMAIL, "other@example.com"), ext="E1")])
    assert d == [RowDecision(Action.CREATE, -1, "E1"), RowDecision(Action.UPDATE, -1, None, "externalCustomerId")]


def test_duplicate_rows_by_email_become_one_contact() -> None:
    """Two rows with the same new email and no ID become one contact; a third with an ID takes it over."""
    d = plan([row(ANN), row(ANN), row(ANN, ext="E2")])
    assert [(x.action, x.target, x.set_external_id) for x in d] == [
        (Action.CREATE, -1, None), (Action.UPDATE, -1, None), (Action.UPDATE, -1, "E2")]


def test_rows_with_different_ids_sharing_an_email_stay_two_people() -> None:
    """Rows with different external IDs and one email are two contacts (a shared family mailbox)."""
    d = plan([row(ANN, ext="E1"), row(ANN, ext="E2")])
    assert [(x.action, x.target) for x in d] == [(Action.CREATE, -1), (Action.CREATE, -2)]


def test_row_without_id_after_identified_rows_takes_the_latest() -> None:
    """An ID-less row after rows that gave the email to identified contacts updates the latest of them."""
    d = plan([row(ANN, ext="E1"), row(ANN, ext="E2"), row(ANN)])
    assert d[2] == RowDecision(Action.UPDATE, -2, None, "email")


def test_earlier_row_restores_for_later_rows() -> None:
    """A contact restored by one row is live for the next row with the same email."""
    d = plan([row(ANN), row(ANN)], keys={"email:ann@example.com": [contact(4, deleted=True)]}, restore=True)
    assert [(x.action, x.target) for x in d] == [(Action.RESTORE, 4), (Action.UPDATE, 4)]


def test_email_or_sms_tries_email_first_then_sms() -> None:
    """email_or_sms: the email decides when it matches; otherwise the phone."""
    phone = (SMS, "+380671234567")
    r = row(ANN, phone, on=DedupeOn.EMAIL_OR_SMS)
    keys = {"email:ann@example.com": [contact(1)], "sms:+380671234567": [contact(2)]}
    assert plan([r], keys=keys, on=DedupeOn.EMAIL_OR_SMS)[0].target == 1
    keys = {"email:ann@example.com": [], "sms:+380671234567": [contact(2)]}
    assert plan([r], keys=keys, on=DedupeOn.EMAIL_OR_SMS)[0] == RowDecision(Action.UPDATE, 2, None, "sms")


def test_field_id_matches_on_the_fields_value() -> None:
    """fieldId: the contact holding that custom field value is updated."""
    r = row(ANN, on=DedupeOn.FIELD, field="gold")
    d = plan([r], keys={"field:7:gold": [contact(8)]}, on=DedupeOn.FIELD)
    assert d == [RowDecision(Action.UPDATE, 8, None, "field")]


def test_id_updates_the_named_contact_or_fails() -> None:
    """dedupeOn=id: the contact with that id is updated; an unknown id fails that row alone."""
    r = row(ANN, contact_id=8, on=DedupeOn.ID)
    assert plan([r], keys={"id:8": [contact(8)]}, on=DedupeOn.ID) == [RowDecision(Action.UPDATE, 8, None, "id")]
    failed = plan([r], keys={"id:8": []}, on=DedupeOn.ID)[0]
    assert failed.action is None and "8" in (failed.reason or "")


def test_row_with_nothing_to_dedupe_on_fails() -> None:
    """A row with neither an external ID nor a value of the dedupe field fails, naming why."""
    d = plan([row((SMS, "+380671234567"))])
    assert d[0].action is None and "email" in (d[0].reason or "")
