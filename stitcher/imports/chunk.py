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

from stitcher import group_refs
from stitcher.domain.identifiers import IdentifierKind
from stitcher.domain.rules import Action, ImportLookup, RowDecision, plan_import
from stitcher.imports.parse import Parsed
from stitcher.imports.request import ImportRequest
from stitcher.store import audit, bulk, groups, held_events, identity_keys, import_sessions, repo
from stitcher.store.db import Database
from stitcher.store.repo import now_ms

GROUPS_PER_STATEMENT = 500  # group names per lookup (SQLite binds each; rows may name 100 groups each)


class StaleCandidates(Exception):
    """A contact the chunk found was merged or erased before its row lock was taken: run the chunk again."""


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
        own, dynamic = await _own_groups(db, s, targets.values())
        await bulk.add_memberships(db, s, [(real[t], g) for t, v in targets.items()
                                           for g in dict.fromkeys((*group_ids, *(own[n] for n in v.groups)))],
                                   None, now)
        audit.record_all(s, [(real[t], action, detail) for t, v in targets.items()
                             for action, detail in v.audit], request_id, now)
        await held_events.attach(db, s, {real[t]: v.keys for t, v in targets.items()})
        await _record(db, s, import_id, parsed, decisions, real, dynamic, now)
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


async def _own_groups(db: Database, s: AsyncSession, targets: Iterable[_Target]) -> tuple[dict[str, int], set[str]]:
    """The ids of the groups the rows name themselves (a contact payload's ``groups``), created when missing
    in the chunk's transaction, and which of them are dynamic (joined by no row); sorted, so that two chunks
    creating the same groups take their index entries in one order."""
    names = sorted({name for t in targets for name in t.groups})
    ids: dict[str, int] = {}
    dynamic: set[str] = set()
    for k in range(0, len(names), GROUPS_PER_STATEMENT):
        part = names[k:k + GROUPS_PER_STATEMENT]
        ids.update(zip(part, await repo.ensure_groups(db, s, part), strict=True))
        dynamic |= await groups.dynamic_names(s, part)
    return ids, dynamic


async def _record(db: Database, s: AsyncSession, import_id: str, parsed: Parsed, decisions: Sequence[RowDecision],
                  real: Mapping[int, int], dynamic: set[str], now: int) -> None:
    """The chunk's per-row results and the import's progress, in the chunk's transaction; a landed row's
    ``error`` says which dynamic groups of its own it did not join (``group_refs.left_out``)."""
    results: list[tuple[int, int | None, str, str | None]] = [(i, None, "failed", error) for i, error in parsed.bad]
    for (index, command, *_), d in zip(parsed.good, decisions, strict=True):
        target = real.get(d.target, d.target) if d.target is not None else None
        reason = d.reason
        if d.action in (Action.CREATE, Action.UPDATE, Action.RESTORE) and dynamic & set(command.groups):
            reason = "; ".join(i["reason"] for i in group_refs.left_out(command.groups, dynamic, "groups"))
        results.append((index, target, d.action.value if d.action else "failed", reason))
    counts = Counter(action for _, _, action, _ in results)
    await import_sessions.record_chunk(db, s, import_id, parsed.end, results, counts, now)
