"""The groups a contact payload names, checked before the write: a group named only by its id (``{"id": 7}``)
that no group has, and any group (by id or by name) that is dynamic, are listed under ``ignored`` — never a
400 for the contact, and a dynamic group never gets static members (its conditions decide who is in it).
An import naming a dynamic group reports it the same way (``left_out``): its answer and final description
for ``groupNames``, each row's mapping entry for the row's own ``groups``.

Groups named by id keep their id (``group_ids`` then holds ``(id, name)``): the write joins them by id and
never creates one by their name, so a group deleted between this check and the write is simply not joined
(``stitcher.store.groups.joinable``), never re-created, never a 500.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace

from stitcher.domain.commands import ContactCommand, GroupId, SubscribeCommand
from stitcher.domain.identifiers import Ignored
from stitcher.store import groups
from stitcher.store.db import Database
from stitcher.store.models import Group

DYNAMIC = "a dynamic group takes no members: its conditions decide who is in it"


async def _resolve(db: Database, refs: Sequence[GroupId], names: Sequence[str], where: str
                   ) -> tuple[tuple[GroupId, ...], tuple[str, ...], tuple[Ignored, ...]]:
    """The static groups among ``refs`` as ``(id, name)``, the names that are not dynamic groups', and what
    was left out and why."""
    async with db.reader() as s:
        found: dict[int, Group] = await groups.by_ids(s, [g for g, _ in refs]) if refs else {}
        dynamic = await groups.dynamic_names(s, names)
    ignored: list[Ignored] = []
    kept: list[GroupId] = []
    for group_id, at in refs:
        group = found.get(group_id)
        if group is None:
            ignored.append({"field": at, "reason": "no group has this id"})
        elif group.type != "static":
            ignored.append({"field": at, "reason": DYNAMIC})
        else:
            kept.append((group_id, group.name))
    ignored += left_out(names, dynamic, where)
    return tuple(kept), tuple(n for n in names if n not in dynamic), tuple(ignored)


def left_out(names: Sequence[str], dynamic: Collection[str], where: str) -> list[Ignored]:
    """What a write reports for the dynamic groups among ``names`` it leaves out: the one rule of contact
    and subscribe ``groups`` and of an import's ``groupNames`` and rows' ``groups``."""
    return [{"field": where, "reason": f"{name!r}: {DYNAMIC}"} for name in dict.fromkeys(names) if name in dynamic]


async def named(db: Database, names: Sequence[str], where: str) -> list[Ignored]:
    """``left_out`` of ``names`` as the groups are now (an import's ``groupNames``, when it is accepted)."""
    if not names:
        return []
    async with db.reader() as s:
        return left_out(names, await groups.dynamic_names(s, names), where)


async def contact(db: Database, command: ContactCommand, where: str = "groups") -> ContactCommand:
    """The command with its groups checked: ``group_ids`` the static groups it names by id, as ``(id, name)``;
    ``where`` is where the request lists them."""
    if not command.group_ids and not command.groups:
        return command
    kept, names, ignored = await _resolve(db, command.group_ids, command.groups, where)
    return replace(command, group_ids=kept, groups=names, ignored=(*command.ignored, *ignored))


async def subscribe(db: Database, command: SubscribeCommand) -> SubscribeCommand:
    """The command with the groups its contact and its top-level list name checked as ``contact`` does; what
    either left out is listed on the contact (subscribe's answer lists the contact's ``ignored``)."""
    person = await contact(db, command.contact, "contact.groups")
    if not command.group_ids and not command.groups:
        return replace(command, contact=person)
    kept, names, ignored = await _resolve(db, command.group_ids, command.groups, "groups")
    return replace(command, group_ids=kept, groups=names, contact=replace(person, ignored=(*person.ignored, *ignored)))


def joined_names(command: ContactCommand, top: SubscribeCommand | None = None) -> list[str]:
    """The names of the groups a request puts the contact in, as its answer lists them: the contact's own (by
    name, then by id), then subscribe's top-level ones."""
    parts = [*command.groups, *(name for _, name in command.group_ids)]
    if top is not None:
        parts += [*top.groups, *(name for _, name in top.group_ids)]
    return list(dict.fromkeys(parts))
