"""Identity decisions: which contact a request is about, and what happens to it.

Pure functions of (request identity, candidate contacts the store found) → ``Decision`` (DESIGN invariant 8).
The service layer loads the candidates, calls ``decide`` and applies the decision in one transaction; every
rule of SPEC §1/§3 and of the DESIGN merge policy lives here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from stitcher.domain.errors import ContactNotFound, ExternalIdConflict
from stitcher.domain.identifiers import IdentifierKind, Identity

__all__ = [
    "LOOKUP_ORDER",
    "Action",
    "Candidate",
    "Decision",
    "Lookup",
    "Mode",
    "OrderOwner",
    "choose",
    "decide",
    "decide_order_owner",
    "lookup_kinds",
    "ranked",
]

# SPEC §1: contactId > externalCustomerId > email > sms > mobilepush > webpush.
LOOKUP_ORDER: tuple[IdentifierKind, ...] = (
    IdentifierKind.EMAIL, IdentifierKind.SMS, IdentifierKind.MOBILEPUSH, IdentifierKind.WEBPUSH,
)


class Mode(StrEnum):
    """Which API call asks: they differ in what may find, create and merge contacts."""

    ADD_UPDATE = "add_update"  # POST /api/v1/contact
    UPDATE = "update"  # PUT /api/v1/contact/{id}
    SUBSCRIBE = "subscribe"  # POST /api/v1/contact/subscribe
    ORDER = "order"  # POST /api/v1/orders: finds the buyer, creates one if none, never changes a contact


class Action(StrEnum):
    """What happens to the target contact; the values are the words the audit log and import counters use."""

    CREATE = "created"
    UPDATE = "updated"
    RESTORE = "restored"


@dataclass(frozen=True)
class Candidate:
    """An existing contact as the rules need to see it."""

    id: int
    external_id: str | None
    deleted: bool
    updated_at: float  # epoch seconds


@dataclass(frozen=True)
class Lookup:
    """What the store found for the request's identifiers.

    ``by_contact_id`` is the contact named by contactId, live or deleted (None if it does not exist);
    ``by_external_id`` holds the request's external ID, live or soft-deleted; ``by_channel`` maps each
    (kind, normalised value) to the LIVE, unmerged contacts holding it.
    """

    by_contact_id: Candidate | None = None
    by_external_id: Candidate | None = None
    by_channel: Mapping[tuple[IdentifierKind, str], tuple[Candidate, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """The outcome of ``decide``, for the service layer to apply in one transaction.

    ``target`` is None only for CREATE. ``set_external_id`` is the external ID to write on the target (or the
    new contact), None when it stays as it is. ``merge`` lists unidentified contacts to fold into the target,
    in priority order, never the target itself. ``found_by`` names the identifier that decided.
    """

    action: Action
    target: int | None
    set_external_id: str | None = None
    merge: tuple[int, ...] = ()
    found_by: str | None = None

    @property
    def merged(self) -> bool:
        """Whether applying the decision folds other contacts into the target."""
        return bool(self.merge)


def lookup_kinds(mode: Mode) -> tuple[IdentifierKind, ...]:
    """The channel kinds whose lookups can change a decision in ``mode``, highest priority first.

    Subscribe finds like add/update (SPEC §3: external ID, email, phone, then the push token, so that a
    repeated token-only subscribe finds its contact). An update by contactId never looks at channels. The
    store may skip lookups of other kinds.
    """
    if mode is Mode.UPDATE:
        return ()
    if mode is Mode.ORDER:  # SPEC §3: an order finds its contact by externalCustomerId > email > phone
        return (IdentifierKind.EMAIL, IdentifierKind.SMS)
    return LOOKUP_ORDER


def ranked(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Live candidates best first: without an external ID first, then most recently updated, then higher id.

    The one order used everywhere several contacts share an identifier (SPEC §1), so that single calls,
    subscribe, import, events and orders all pick the same person.
    """
    live = [c for c in candidates if not c.deleted]
    return sorted(live, key=lambda c: (c.external_id is not None, -c.updated_at, -c.id))


def choose(candidates: Iterable[Candidate]) -> Candidate | None:
    """The contact an identifier shared by several contacts means (see ``ranked``); None if none is live."""
    best = ranked(candidates)
    return best[0] if best else None


def decide(mode: Mode, identity: Identity, found: Lookup) -> Decision:
    """Decide which contact the request updates, creates or restores, and which contacts merge into it.

    Raises ``ContactNotFound`` when a named contactId is unknown or deleted, and ``ExternalIdConflict`` when
    the request's external ID belongs to a contact other than the one contactId names.
    """
    probes = _probes(mode, identity, found)
    if mode is Mode.UPDATE or identity.contact_id is not None:
        return _by_contact_id(mode, identity, found, probes)

    ext = identity.external_id
    if ext is not None:
        holder = found.by_external_id
        if holder is not None:
            # The external ID is the stable identity: it wins over every channel, even on a deleted contact.
            action = Action.RESTORE if holder.deleted else Action.UPDATE
            return _decision(action, holder, ext, probes, "externalCustomerId")
        for kind, candidates in probes:
            # Only an unidentified profile may be given the ID; another person's contact is never taken over.
            unidentified = [c for c in candidates if c.external_id is None]
            if unidentified:
                return _decision(Action.UPDATE, unidentified[0], ext, probes, kind.value)
        # Nothing unidentified matched, so there is nothing to merge: identified ones are never merged.
        return Decision(Action.CREATE, None, set_external_id=ext)

    for kind, candidates in probes:
        if candidates:
            return _decision(Action.UPDATE, candidates[0], None, probes, kind.value)
    return Decision(Action.CREATE, None)


_Probes = list[tuple[IdentifierKind, list[Candidate]]]


def _probes(mode: Mode, identity: Identity, found: Lookup) -> _Probes:
    """Each of the request's finding identifiers in priority order (kind, then request order) with its
    candidates best first."""
    probes: _Probes = []
    for kind in lookup_kinds(mode):
        for value in identity.values(kind):
            probes.append((kind, ranked(found.by_channel.get((kind, value), ()))))
    return probes


def _by_contact_id(mode: Mode, identity: Identity, found: Lookup, probes: _Probes) -> Decision:
    """contactId outranks every other identifier: that contact is updated or the request fails."""
    target = found.by_contact_id
    if identity.contact_id is None or target is None or target.deleted or target.id != identity.contact_id:
        raise ContactNotFound(identity.contact_id)
    ext = identity.external_id
    holder = found.by_external_id
    if ext is not None and holder is not None and holder.id != target.id:
        raise ExternalIdConflict(ext, holder.id, target.id)
    # PUT only updates the contact it names; add/update and subscribe still fold in unidentified matches.
    return _decision(Action.UPDATE, target, ext, [] if mode is Mode.UPDATE else probes, "contactId")


def _decision(action: Action, target: Candidate, ext: str | None, probes: _Probes, found_by: str) -> Decision:
    merge: list[int] = []
    for _kind, candidates in probes:
        for c in candidates:
            # Contacts holding an external ID are someone: merging them would join two people.
            if c.external_id is None and c.id != target.id and c.id not in merge:
                merge.append(c.id)
    return Decision(
        action=action,
        target=target.id,
        set_external_id=ext if ext is not None and target.external_id != ext else None,
        merge=tuple(merge),
        found_by=found_by,
    )


@dataclass(frozen=True)
class OrderOwner:
    """The contact an order belongs to: ``contact_id``, or a new contact when it is None (holding the order's
    external ID, if it has one). ``found_by`` names the identifier that decided."""

    contact_id: int | None
    found_by: str | None = None


def decide_order_owner(identity: Identity, found: Lookup) -> OrderOwner:
    """Which contact an order is about: the add/update decision (``decide``) on the order's external ID,
    email and phone, read without its writes.

    An order never changes a contact (SPEC §3): the contact the rules pick gets the order but not the
    order's external ID (an email match without an ID stays without one), nothing is merged into it, and a
    soft-deleted holder of the external ID gets the order while staying deleted. Only when the rules would
    create a contact does the order create one.
    """
    decision = decide(Mode.ORDER, identity, found)
    return OrderOwner(decision.target, decision.found_by)
