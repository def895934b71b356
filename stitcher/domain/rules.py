"""Identity decisions: which contact a request is about, and what happens to it.

Pure functions of (request identity, candidate contacts the store found) → ``Decision`` (DESIGN invariant 8).
The service layer loads the candidates, calls ``decide`` and applies the decision in one transaction; every
rule of SPEC §1/§3 and of the DESIGN merge policy lives here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from stitcher.domain.errors import ContactNotFound, ExternalIdConflict, FieldErrors, InvalidIdentifier, ValidationFailed
from stitcher.domain.identifiers import IdentifierKind, Identity, Normaliser

__all__ = [
    "LOOKUP_ORDER",
    "Action",
    "Candidate",
    "Decision",
    "DedupeOn",
    "EventRoute",
    "ImportLookup",
    "ImportRow",
    "Lookup",
    "Mode",
    "OrderOwner",
    "RecipientMatch",
    "RowDecision",
    "choose",
    "decide",
    "decide_order_owner",
    "dedupe_keys",
    "event_identity",
    "lookup_kinds",
    "plan_import",
    "ranked",
    "resolve_recipient",
    "route_event",
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
    SKIP = "skipped"  # an import row whose person is a deleted contact, without restoreDeleted


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


# --- API events (SPEC §3, POST /api/v2/event): who an event is about, and where it goes -------------------

# The params that name the person, as the platform's clients spell them (compared case-insensitively):
# contactId > externalCustomerId > email > phone > pushToken. A push token may be a mobile or a web one.
EVENT_IDENTIFIER_PARAMS: Mapping[str, str] = {
    "contactid": "contactId", "externalcustomerid": "externalCustomerId",
    "email": "email", "emailaddress": "email",
    "phone": "phone", "phonenumber": "phone", "sms": "phone",
    "pushtoken": "pushToken",
}


def event_identity(params: Sequence[tuple[str, Any]], key_value: Any, normaliser: Normaliser) -> Identity:
    """The identifiers an event names, from its params ``(name, value)`` (in body order), else its keyValue.

    Params named as in ``EVENT_IDENTIFIER_PARAMS`` are read; a blank or placeholder value is ignored (as if
    absent), a malformed one is a 400 naming ``params[i].value``. Only when no param names anyone is the
    ``keyValue`` read, by its shape (it is one string, so its kind is guessed the same way every time):
    with an ``@`` it is an email; starting with ``+`` or ``00`` it is a phone number; anything else is an
    external customer ID. It is never read as a contactId (a small number keyed on by a client is far
    more likely its own customer number) nor as a push token (indistinguishable from an external ID).
    Raises ``ValidationFailed`` when nothing names a person.
    """
    errors = FieldErrors()
    contact_id: int | None = None
    external_id: str | None = None
    by_kind: dict[IdentifierKind, list[str]] = {k: [] for k in LOOKUP_ORDER}
    for i, (name, value) in enumerate(params):
        what = EVENT_IDENTIFIER_PARAMS.get(name.strip().lower())
        if what is None or _blank(value, normaliser):
            continue
        where = f"params[{i}].value"
        try:
            if what == "contactId":
                contact_id = contact_id or _contact_id(value, where)
            elif what == "externalCustomerId":
                external_id = external_id or normaliser.external_id(value, where)
            elif what == "email":
                by_kind[IdentifierKind.EMAIL].append(normaliser.email(value, where))
            elif what == "phone":
                by_kind[IdentifierKind.SMS].append(normaliser.phone(value, where))
            else:
                token = normaliser.token(value, where)
                by_kind[IdentifierKind.MOBILEPUSH].append(token)
                by_kind[IdentifierKind.WEBPUSH].append(token)
        except ValidationFailed as exc:
            errors.extend(exc)
    errors.raise_if_any()
    channels = tuple(dict.fromkeys((k, v) for k in LOOKUP_ORDER for v in by_kind[k]))
    identity = Identity(contact_id=contact_id, external_id=external_id, channels=channels)
    if contact_id is None and external_id is None and not channels and not _blank(key_value, normaliser):
        identity = read_key_value(key_value, normaliser)
    if identity.contact_id is None and identity.external_id is None and not identity.channels:
        names = "contactId, externalCustomerId, email, phone or pushToken"
        raise ValidationFailed([{"field": "keyValue",
                                 "message": f"names no contact: give a keyValue or a param {names}"}])
    return identity


def _blank(value: Any, normaliser: Normaliser) -> bool:
    """Absent, blank or a placeholder: treated as if not given."""
    if value is None:
        return True
    text = str(value).strip() if isinstance(value, str | int) and not isinstance(value, bool) else None
    return text is not None and (not text or text.lower() in normaliser.placeholders)


def _contact_id(value: Any, where: str) -> int:
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value.strip()) < 20:
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**63:
        raise InvalidIdentifier(where, "must be a positive integer below 2^63")
    return value


def read_key_value(value: Any, normaliser: Normaliser, field: str = "keyValue") -> Identity:
    """One identifier read by its shape, as an event's ``keyValue`` is: with an ``@`` an email, starting
    with ``+`` or ``00`` a phone number, anything else an external customer ID."""
    if isinstance(value, str) and "@" in value:
        return Identity(channels=((IdentifierKind.EMAIL, normaliser.email(value, field)),))
    if isinstance(value, str) and value.strip().startswith(("+", "00")):
        return Identity(channels=((IdentifierKind.SMS, normaliser.phone(value, field)),))
    return Identity(external_id=normaliser.external_id(value, field))


@dataclass(frozen=True)
class EventRoute:
    """Where ``route_event`` sends an event: onto ``contact_id``'s timeline, or, when nobody it names is
    known, held under the one identifier ``hold`` (an ``Identity`` with only that identifier)."""

    contact_id: int | None
    found_by: str | None = None
    hold: Identity | None = None


def route_event(identity: Identity, found: Lookup) -> EventRoute:
    """The contact an event belongs to. An event never creates a contact.

    Its identifiers are tried in priority order (contactId > externalCustomerId > email > phone > push
    token); the first that finds a contact decides. contactId and externalCustomerId find their contact
    even when soft-deleted (so a restore loses nothing, as with beacons); a channel shared by several live
    contacts means the one ``choose`` picks, among those not holding another external ID than the event's
    (an event about customer X never lands on customer Y's timeline). When nothing is found, the event is
    held under its highest-priority identifier other than contactId — external ID, else email, else phone,
    else push token (held as ``mobilepush``; a web push token claims it as well) — and joins the timeline of
    the first contact that gets that identifier. A contactId of a merged contact names the contact it was
    merged into (the store puts that one in ``by_contact_id``). An unknown contactId alone raises
    ``ContactNotFound``: no contact will ever get that id.
    """
    by_id = found.by_contact_id
    if identity.contact_id is not None and by_id is not None:  # the named contact, or the one it was merged into
        return EventRoute(by_id.id, "contactId")
    ext = identity.external_id
    if ext is not None and found.by_external_id is not None:
        return EventRoute(found.by_external_id.id, "externalCustomerId")
    for kind in LOOKUP_ORDER:
        for value in identity.values(kind):
            candidates = found.by_channel.get((kind, value), ())
            best = choose(c for c in candidates if c.external_id is None or ext is None or c.external_id == ext)
            if best is not None:
                return EventRoute(best.id, kind.value)
    if ext is not None:
        return EventRoute(None, hold=Identity(external_id=ext))
    for kind, value in identity.channels:
        return EventRoute(None, hold=Identity(channels=((kind, value),)))
    raise ContactNotFound(identity.contact_id)
# --- bulk import -----------------------------------------------------------------------------------------


class DedupeOn(StrEnum):
    """What an import row is matched on when it has no external ID of a known contact (``dedupeOn``)."""

    EMAIL = "email"
    SMS = "sms"
    EMAIL_OR_SMS = "email_or_sms"
    EXTERNAL_ID = "externalCustomerId"
    ID = "id"
    MOBILEPUSH = "mobilepush"
    FIELD = "fieldId"


_DEDUPE_KINDS: dict[DedupeOn, tuple[IdentifierKind, ...]] = {
    DedupeOn.EMAIL: (IdentifierKind.EMAIL,),
    DedupeOn.SMS: (IdentifierKind.SMS,),
    DedupeOn.EMAIL_OR_SMS: (IdentifierKind.EMAIL, IdentifierKind.SMS),
    DedupeOn.MOBILEPUSH: (IdentifierKind.MOBILEPUSH,),
}


def dedupe_keys(on: DedupeOn, identity: Identity, field_id: str | None = None,
                field_value: str | None = None) -> tuple[str, ...]:
    """The keys a row is matched on, best first, spelt as identity keys are (``email:<v>``, ``id:<n>``;
    a custom field's value as ``field:<id>:<value>``)."""
    if on is DedupeOn.ID:
        return (f"id:{identity.contact_id}",) if identity.contact_id is not None else ()
    if on is DedupeOn.FIELD:
        return (f"field:{field_id}:{field_value}",) if field_value is not None else ()
    return tuple(f"{kind.value}:{value}" for kind in _DEDUPE_KINDS.get(on, ()) for value in identity.values(kind))


@dataclass(frozen=True)
class ImportRow:
    """One parsed row: its identity and the keys it is matched on (``dedupe_keys``)."""

    identity: Identity
    keys: tuple[str, ...]


@dataclass(frozen=True)
class ImportLookup:
    """What the store found for a chunk of rows: the holder of each external ID (live or deleted), and for
    each dedupe key the unmerged contacts holding it, deleted ones included (a row may restore them)."""

    by_external_id: Mapping[str, Candidate] = field(default_factory=dict)
    by_key: Mapping[str, tuple[Candidate, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class RowDecision:
    """What one import row does. ``target`` is an existing contact's id, or ``-n`` for the n-th contact the
    chunk creates (the store gives it its id). ``action`` None: the row fails, ``reason`` says why; SKIP
    also names its reason and the deleted contact in ``target``."""

    action: Action | None
    target: int | None = None
    set_external_id: str | None = None
    found_by: str | None = None
    reason: str | None = None


def plan_import(rows: Sequence[ImportRow], found: ImportLookup, *, dedupe_on: DedupeOn,
                restore_deleted: bool, now: float) -> list[RowDecision]:
    """Decide every row of a chunk as if the rows were applied one after another (SPEC §3, bulk import).

    The row's own external ID decides first (its holder is updated; a deleted holder restored or skipped);
    otherwise the dedupe keys, in order: with an external ID, only a contact without one may be matched
    (the best by ``ranked``), and it gets the ID; if every match holds another ID, a new contact is made.
    Without an external ID, the best live match (``choose``) is updated. A deleted match is skipped unless
    ``restore_deleted``. Earlier rows of the chunk are seen by later ones, so two rows naming the same
    person (the same external ID or dedupe key) land on one contact.
    """
    contacts: dict[int, Candidate] = {}
    by_ext: dict[str, int] = {}
    by_key: dict[str, list[int]] = {}
    for c in found.by_external_id.values():
        contacts[c.id] = c
        if c.external_id is not None:
            by_ext[c.external_id] = c.id
    for key, cands in found.by_key.items():
        for c in cands:
            contacts.setdefault(c.id, c)
        by_key[key] = [c.id for c in cands]
    decisions: list[RowDecision] = []
    created = 0
    for i, row in enumerate(rows):
        matches = {key: [contacts[cid] for cid in by_key.get(key, ())] for key in row.keys}
        holder = contacts[by_ext[row.identity.external_id]] if row.identity.external_id in by_ext else None
        decision = _import_row(row, holder, matches, dedupe_on, restore_deleted)
        if decision.action is Action.CREATE:  # a CREATE names nothing but its external ID
            created += 1
            decision = RowDecision(Action.CREATE, -created, decision.set_external_id)
        decisions.append(decision)
        if decision.action not in (Action.CREATE, Action.UPDATE, Action.RESTORE):
            continue
        assert decision.target is not None
        # what the row makes of its contact, for the rows after it: its ID, keys, liveness, recency
        before = contacts.get(decision.target)
        ext = decision.set_external_id or (before.external_id if before else None)
        contacts[decision.target] = Candidate(decision.target, ext, False, now + (i + 1) / 1000)
        if ext is not None:
            by_ext[ext] = decision.target
        for key in row.keys:
            if decision.target not in by_key.setdefault(key, []):
                by_key[key].append(decision.target)
    return decisions


def _import_row(row: ImportRow, holder: Candidate | None, matches: Mapping[str, list[Candidate]],
                dedupe_on: DedupeOn, restore_deleted: bool) -> RowDecision:
    ext = row.identity.external_id
    if holder is not None:  # the external ID is the stable identity: it wins over every dedupe key
        return _live_or_restored(holder, None, "externalCustomerId", restore_deleted)
    if ext is None and not row.keys:
        return RowDecision(None, reason=f"has neither an externalCustomerId nor a value to dedupe on ({dedupe_on})")
    deleted: list[tuple[float, int, str, Candidate]] = []
    for key, cands in matches.items():
        # with an external ID only an unidentified contact may be matched: another person's is never taken
        eligible = [c for c in cands if ext is None or c.external_id is None]
        best = choose(eligible)
        if best is not None:
            return RowDecision(Action.UPDATE, best.id, ext, _found_by(key))
        deleted += [(-c.updated_at, -c.id, key, c) for c in eligible if c.deleted]
    if deleted:  # no live match: the most recently updated deleted one is restored or skipped
        *_, key, newest = min(deleted, key=lambda d: d[:2])
        return _live_or_restored(newest, ext, _found_by(key), restore_deleted)
    if dedupe_on is DedupeOn.ID and ext is None:
        return RowDecision(None, reason=f"no contact has the id {row.identity.contact_id}")
    return RowDecision(Action.CREATE, None, ext)


def _live_or_restored(c: Candidate, ext: str | None, found_by: str, restore_deleted: bool) -> RowDecision:
    if not c.deleted:
        return RowDecision(Action.UPDATE, c.id, ext, found_by)
    if restore_deleted:
        return RowDecision(Action.RESTORE, c.id, ext, found_by)
    return RowDecision(Action.SKIP, c.id, found_by=found_by,
                       reason=f"contact {c.id} is deleted (restoreDeleted is false)")


def _found_by(key: str) -> str:
    """The identifier a dedupe key stands for, as the audit log names it (``email``, ``id``, ``field``)."""
    return key.partition(":")[0]
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


@dataclass(frozen=True)
class RecipientMatch:
    """The contact a message recipient is (``contact_id``, found by ``found_by``), or why it is none."""

    contact_id: int | None
    found_by: str | None = None
    error: str | None = None


def resolve_recipient(identity: Identity, found: Lookup) -> RecipientMatch:
    """Which contact a smartsend recipient is: named by ``contactId > externalCustomerId > locator`` (SPEC §3).

    The highest-priority field given decides; every lower one given must name the same contact (the
    contact's external ID, one of its channels), else the recipient fails saying which field disagrees —
    a message never goes to someone the caller did not mean. A locator alone means the contact ``choose``
    picks among its live holders. An unknown or deleted contact fails. ``identity.channels`` holds the
    locator (at most one); ``found`` is as for ``decide`` (``by_channel`` live contacts only).
    """
    ext = identity.external_id
    locator = identity.channels[0] if identity.channels else None
    target: Candidate | None
    if identity.contact_id is not None:
        target, named_by = found.by_contact_id, "contactId"
        if target is None:
            return RecipientMatch(None, error=f"contact {identity.contact_id} not found")
    elif ext is not None:
        target, named_by = found.by_external_id, "externalCustomerId"
        if target is None:
            return RecipientMatch(None, error="no contact has this externalCustomerId")
    else:
        assert locator is not None
        target, named_by = choose(found.by_channel.get(locator, ())), "locator"
        if target is None:
            return RecipientMatch(None, error="no contact has this locator")
    if target.deleted:
        return RecipientMatch(None, error=f"contact {target.id} is deleted")
    if named_by == "contactId" and ext is not None and target.external_id != ext:
        holder = found.by_external_id
        other = f"contact {holder.id}" if holder is not None else "no contact"
        return RecipientMatch(None, error=f"externalCustomerId names {other}, not contact {target.id} "
                                          "(named by contactId)")
    if locator is not None and named_by != "locator" \
            and all(c.id != target.id for c in found.by_channel.get(locator, ())):
        holder = choose(found.by_channel.get(locator, ()))
        other = f"contact {holder.id}" if holder is not None else "no contact"
        return RecipientMatch(None, error=f"locator names {other}, not contact {target.id} (named by {named_by})")
    return RecipientMatch(target.id, named_by)
