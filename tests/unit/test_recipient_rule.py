"""``rules.resolve_recipient``: contactId > externalCustomerId > locator, every lower field agreeing."""

from __future__ import annotations

from stitcher.domain.identifiers import IdentifierKind, Identity
from stitcher.domain.rules import Candidate, Lookup, resolve_recipient

ANN = Candidate(1, "C-1", False, 10.0)
BOB = Candidate(2, None, False, 20.0)
GONE = Candidate(3, "C-3", True, 5.0)
EMAIL = (IdentifierKind.EMAIL, "ann@example.com")


def test_the_highest_field_decides_and_lower_ones_must_agree():
    """contactId wins; an external ID or locator of another contact fails, saying which field disagrees."""
    both = Lookup(by_contact_id=ANN, by_external_id=ANN, by_channel={EMAIL: (ANN,)})
    assert resolve_recipient(Identity(1, "C-1", (EMAIL,)), both).contact_id == 1
    other = Lookup(by_contact_id=ANN, by_external_id=BOB)
    miss = resolve_recipient(Identity(1, "C-2"), other)
    assert miss.contact_id is None and miss.error is not None and miss.error.startswith("externalCustomerId")
    elsewhere = resolve_recipient(Identity(None, "C-1", (EMAIL,)),
                                  Lookup(by_external_id=ANN, by_channel={EMAIL: (BOB,)}))
    assert elsewhere.error == "locator names contact 2, not contact 1 (named by externalCustomerId)"


def test_a_locator_alone_picks_like_every_shared_identifier():
    """A shared address means the contact ``choose`` picks: without an external ID first."""
    match = resolve_recipient(Identity(channels=(EMAIL,)), Lookup(by_channel={EMAIL: (ANN, BOB)}))
    assert match.contact_id == 2 and match.found_by == "locator"


def test_unknown_and_deleted_contacts_fail():
    """A contactId nobody has, an external ID nobody holds and a deleted contact each fail."""
    assert resolve_recipient(Identity(9), Lookup()).error == "contact 9 not found"
    assert resolve_recipient(Identity(None, "X"), Lookup()).error == "no contact has this externalCustomerId"
    assert resolve_recipient(Identity(3), Lookup(by_contact_id=GONE)).error == "contact 3 is deleted"
    assert resolve_recipient(Identity(channels=(EMAIL,)), Lookup()).error == "no contact has this locator"
