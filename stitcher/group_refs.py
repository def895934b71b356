"""Groups a contact payload names only by id (``{"id": 7}``): the existing ones are joined by their name, as
every other group is; an id that names no group is listed under ``ignored``, never a 400 for the contact.

Resolved before the write: a group's id and name never change once it exists (groups are created, never
renamed or removed), so reading them outside the write's transaction decides nothing differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from stitcher.domain.commands import ContactCommand, GroupId, SubscribeCommand
from stitcher.domain.identifiers import Ignored
from stitcher.store import repo
from stitcher.store.db import Database


async def _names(db: Database, refs: Sequence[GroupId]) -> dict[int, str]:
    async with db.reader() as s:
        return await repo.group_names(s, [group_id for group_id, _ in refs])


def _missing(refs: Sequence[GroupId], names: dict[int, str]) -> tuple[Ignored, ...]:
    return tuple({"field": where, "reason": "no group has this id"} for group_id, where in refs
                 if group_id not in names)


async def contact(db: Database, command: ContactCommand) -> ContactCommand:
    """The command with its groups named by id among its group names."""
    if not command.group_ids:
        return command
    names = await _names(db, command.group_ids)
    return replace(command, group_ids=(), ignored=(*command.ignored, *_missing(command.group_ids, names)),
                   groups=tuple(dict.fromkeys((*command.groups, *(names[g] for g, _ in command.group_ids
                                                                  if g in names)))))


async def subscribe(db: Database, command: SubscribeCommand) -> SubscribeCommand:
    """The command with the groups its contact and its top-level list name by id among their names; what
    either could not find is listed on the contact (subscribe's answer lists the contact's ``ignored``)."""
    person = await contact(db, command.contact)
    if not command.group_ids:
        return replace(command, contact=person)
    names = await _names(db, command.group_ids)
    return replace(command, group_ids=(),
                   contact=replace(person, ignored=(*person.ignored, *_missing(command.group_ids, names))),
                   groups=tuple(dict.fromkeys((*command.groups, *(names[g] for g, _ in command.group_ids
                                                                  if g in names)))))
