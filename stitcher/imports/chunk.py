"""One chunk of an import in one transaction: its rows' contacts, identifiers, groups, audit rows, per-row
results and the import's progress land together or not at all.

Set-based: the chunk's identity keys are locked in one batch, its candidates found in a few queries and
row-locked in one, every row decided in memory (``rules.plan_import``), and the writes sent as multi-row
statements (``stitcher.store.bulk``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from stitcher.domain.commands import ContactCommand
from stitcher.domain.errors import ValidationFailed
from stitcher.domain.identifiers import IdentifierKind, Normaliser
from stitcher.domain.rules import Action, DedupeOn, ImportLookup, ImportRow, RowDecision, dedupe_keys, plan_import
from stitcher.imports.request import ImportRequest
from stitcher.payload import parse_contact
from stitcher.store import audit, bulk, held_events, identity_keys, import_sessions, repo
from stitcher.store.db import Database
from stitcher.store.repo import now_ms

GROUPS_PER_STATEMENT = 500  # group names per lookup (SQLite binds each; rows may name 100 groups each)


class StaleCandidates(Exception):
    """A contact the chunk found was merged or erased before its row lock was taken: run the chunk again."""


@dataclass
class Parsed:
    """Rows ``[start, end)`` after parsing: the good ones (index, command, row, the identity keys it touches —
    worked out where it is parsed, in the parser process when there is one) and the bad ones (index, error)."""

    start: int
    end: int
    good: list[tuple[int, ContactCommand, ImportRow, frozenset[str]]] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)

    def lock_keys(self, import_id: str) -> set[str]:
        """Every identity key the chunk touches, and the import's own key (one runner per chunk)."""
        return {f"import:{import_id}"}.union(*(keys for *_, keys in self.good))

    def split(self, max_keys: int) -> list[Parsed]:
        """Consecutive parts, each locking at most ``max_keys`` identity keys (a row with more is a part of
        its own): PostgreSQL keeps every lock of every transaction in one shared table of fixed size
        (``max_locks_per_transaction`` times connections, 6,400 by default)."""
        parts = [Parsed(self.start, self.start)]
        keys = 0
        bad = dict(self.bad)
        good = {g[0]: g for g in self.good}
        for index in range(self.start, self.end):
            n = len(good[index][3]) if index in good else 0
            if keys + n > max_keys and keys:
                parts.append(Parsed(index, index))
                keys = 0
            part = parts[-1]
            part.end = index + 1
            keys += n
            if index in good:
                part.good.append(good[index])
            else:
                part.bad.append((index, bad[index]))
        return parts


def parse_rows(request: ImportRequest, start: int, end: int, normaliser: Normaliser) -> Parsed:
    """Parse rows ``[start, end)`` with the contact API's own parser; a bad row is kept with its error."""
    return parse_slice(request.contacts[start:end], start, request.dedupe_on, request.field_id, normaliser)


def parse_slice(contacts: Sequence[Any], start: int, dedupe_on: DedupeOn, field_id: str | None,
                normaliser: Normaliser) -> Parsed:
    """``parse_rows`` of the rows given, the first being row ``start``: what a parser process is sent (the
    chunk's rows, not the whole request)."""
    out = Parsed(start, start + len(contacts))
    for index, raw in enumerate(contacts, start):
        try:
            command = parse_contact(raw, normaliser)
            field_value = _field_value(raw, field_id) if dedupe_on is DedupeOn.FIELD else None
        except ValidationFailed as exc:
            out.bad.append((index, exc.message))
            continue
        keys = dedupe_keys(dedupe_on, command.identity, field_id, field_value)
        out.good.append((index, command, ImportRow(command.identity, keys),
                         frozenset((*identity_keys.of_request(command.identity, ()), *keys))))
    return out


def _field_value(raw: Mapping[str, Any], field_id: str | None) -> str | None:
    for item in raw.get("fields") or ():
        if str(item.get("id")) == field_id:
            value = item.get("value")
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise ValidationFailed([{"field": "fields", "message": f"field {field_id} must be text or an "
                                                                        "integer to dedupe on"}])
            return str(value)
    return None


@dataclass
class _Target:
    """What the chunk writes on one contact: attributes to set, identifiers, the keys it is reached by."""

    attrs: dict[str, Any] = field(default_factory=dict)
    channels: dict[tuple[IdentifierKind, str], str | None] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)
    groups: dict[str, None] = field(default_factory=dict)  # the rows' own group names, in order
    audit: list[tuple[str, dict[str, Any] | None]] = field(default_factory=list)


async def apply_chunk(db: Database, import_id: str, request: ImportRequest, parsed: Parsed,
                      group_ids: Sequence[int], request_id: str | None) -> bool:
    """Apply the parsed rows; False if they were already applied (another runner of this import)."""
    now = now_ms()
    async with db.transaction() as s:
        await db.lock_keys(s, parsed.lock_keys(import_id))
        if await import_sessions.next_row(s, import_id) != parsed.start:
            return False
        rows = [row for _, _, row, _ in parsed.good]
        found = await bulk.find(s, [r.identity.external_id for r in rows if r.identity.external_id is not None],
                                {k for r in rows for k in r.keys})
        wanted = found.ids()
        locked = await bulk.lock_contacts(s, wanted)
        if len(locked) != len(wanted) or any(merged for _, merged in locked.values()):
            raise StaleCandidates(import_id)
        lookup = ImportLookup({e: locked[i][0] for e, i in found.by_external_id.items()},
                              {k: tuple(locked[i][0] for i in ids) for k, ids in found.by_key.items()})
        decisions = plan_import(rows, lookup, dedupe_on=request.dedupe_on, restore_deleted=request.restore_deleted,
                                now=now / 1000)
        targets = _targets(parsed, decisions, {i: c for i, (c, _) in locked.items()}, request)
        new = sorted((t for t in targets if t < 0), reverse=True)  # -1, -2, …: in the order rows made them
        ids = dict(zip(new, await bulk.insert_contacts(
            db, s, [(targets[t].attrs.pop("external_customer_id", None), targets[t].attrs) for t in new], now),
            strict=True))
        await bulk.update_contacts(db, s, {t: v.attrs for t, v in targets.items() if t > 0}, now)
        real = {t: ids.get(t, t) for t in targets}
        await bulk.add_identifiers(db, s, [(real[t], k, v, d) for t, v_ in targets.items()
                                           for (k, v), d in v_.channels.items()], now)
        own = await _own_groups(db, s, targets.values())
        await bulk.add_memberships(db, s, [(real[t], g) for t, v in targets.items()
                                           for g in dict.fromkeys((*group_ids, *(own[n] for n in v.groups)))],
                                   None, now)
        audit.record_all(s, [(real[t], action, detail) for t, v in targets.items()
                             for action, detail in v.audit], request_id, now)
        await held_events.attach(db, s, {real[t]: v.keys for t, v in targets.items()})
        await _record(db, s, import_id, parsed, decisions, real, now)
    return True


def _targets(parsed: Parsed, decisions: Sequence[RowDecision], existing: Mapping[int, Any],
             request: ImportRequest) -> dict[int, _Target]:
    """Fold the rows' decisions into what to write on each contact, rows in order (a later row wins field by
    field); ``request.contact_fields`` limits the attributes written on contacts that existed before."""
    targets: dict[int, _Target] = {}
    for (_, command, _, _), decision in zip(parsed.good, decisions, strict=True):
        if decision.action not in (Action.CREATE, Action.UPDATE, Action.RESTORE):
            continue
        assert decision.target is not None
        t = targets.setdefault(decision.target, _Target())
        allowed = None if decision.target < 0 else request.contact_fields
        if allowed is None:
            t.attrs.update(command.profile)
        else:
            t.attrs.update({k: v for k, v in command.profile.items() if k in allowed})
        ext = decision.set_external_id
        if decision.action is Action.CREATE:
            t.audit.append(("created", {"externalCustomerId": ext, "source": "import"}))
        if decision.action is Action.RESTORE:
            t.attrs["deleted_at"] = None
            t.audit.append(("restored", {"source": "import"}))
        if ext is not None:
            t.attrs["external_customer_id"] = ext
            if decision.action is not Action.CREATE:
                before = existing.get(decision.target)
                t.audit.append(("assigned_external_id", {
                    "externalCustomerId": ext, "previous": before.external_id if before else None,
                    "foundBy": decision.found_by, "source": "import"}))
        t.groups.update(dict.fromkeys(command.groups))
        for kind, value, device in command.channels():
            t.channels.setdefault((kind, value), device)
        t.keys.update(identity_keys.of_request(command.identity, ()))
        t.keys.discard(f"id:{command.identity.contact_id}")
        if (current := t.attrs.get("external_customer_id")) is not None:
            t.keys.add(f"ext:{current}")
    return targets


async def _own_groups(db: Database, s: AsyncSession, targets: Iterable[_Target]) -> dict[str, int]:
    """The ids of the groups the rows name themselves (a contact payload's ``groups``), created when missing
    in the chunk's transaction; sorted, so that two chunks creating the same groups take their index
    entries in one order."""
    names = sorted({name for t in targets for name in t.groups})
    ids: dict[str, int] = {}
    for k in range(0, len(names), GROUPS_PER_STATEMENT):
        part = names[k:k + GROUPS_PER_STATEMENT]
        ids.update(zip(part, await repo.ensure_groups(db, s, part), strict=True))
    return ids


async def _record(db: Database, s: AsyncSession, import_id: str, parsed: Parsed,
                  decisions: Sequence[RowDecision], real: Mapping[int, int], now: int) -> None:
    """The chunk's per-row results and the import's progress, in the chunk's transaction."""
    results: list[tuple[int, int | None, str, str | None]] = [(i, None, "failed", error) for i, error in parsed.bad]
    for (index, *_), d in zip(parsed.good, decisions, strict=True):
        target = real.get(d.target, d.target) if d.target is not None else None
        results.append((index, target, d.action.value if d.action else "failed", d.reason))
    counts = Counter(action for _, _, action, _ in results)
    await import_sessions.record_chunk(db, s, import_id, parsed.end, results, counts, now)
