"""Groups: create (a dynamic group's conditions checked whole, the groups they name too), list, read, delete,
and the members of a group, a page and the total, evaluated in SQL when read."""

from __future__ import annotations

from typing import Any

from stitcher import views
from stitcher.domain.errors import ValidationFailed
from stitcher.domain.identifiers import Normaliser
from stitcher.domain.segments import FieldKind, GroupSpec, GroupType, Match, parse_group
from stitcher.store import groups, segments
from stitcher.store.db import Database
from stitcher.store.models import Group
from stitcher.store.repo import now_ms
from tracker.errors import DomainError, NotFound


class GroupNotFound(NotFound):
    code = "group_not_found"

    def __init__(self, group_id: int) -> None:
        super().__init__(f"no group has the id {group_id}", groupId=group_id)


class GroupNameTaken(DomainError):
    status = 409
    code = "group_exists"

    def __init__(self, name: str, group_id: int | None) -> None:
        super().__init__("a group with this name exists", name=name, groupId=group_id)


class GroupConditionsStale(DomainError):
    """A stored dynamic group whose conditions the current rules refuse (made before a rule was tightened,
    e.g. an ``sms equals`` value no phone normalises to): a 409 naming them, never a 400 on a read."""

    status = 409
    code = "group_conditions_stale"

    def __init__(self, group_id: int, errors: list[dict[str, str]]) -> None:
        super().__init__("the group's stored conditions no longer pass the rules: create it again with them "
                         "fixed", groupId=group_id, errors=errors)


def group_body(group: Group) -> dict[str, Any]:
    body: dict[str, Any] = {"id": group.id, "name": group.name, "type": group.type}
    if group.type == GroupType.DYNAMIC.value:
        body |= {"match": group.match, "conditions": group.conditions or []}
    return body


def _spec(group: Group, normaliser: Normaliser) -> GroupSpec:
    """A stored group parsed again (its conditions were checked, and its channel values normalised, when it
    was created)."""
    return parse_group({"name": group.name, "type": group.type, "match": group.match,
                        "conditions": group.conditions}, normaliser)


class GroupService:
    def __init__(self, db: Database, normaliser: Normaliser) -> None:
        self.db, self.normaliser = db, normaliser

    async def create(self, body: Any) -> int:
        """The new group's id: 400 naming every bad field or condition, 409 when the name is taken."""
        spec = parse_group(body, self.normaliser)
        named = {int(c.value or 0): i for i, c in enumerate(spec.conditions) if c.kind is FieldKind.GROUP}
        async with self.db.reader() as s:
            found = await groups.by_ids(s, named) if named else {}
            bad = [{"field": f"conditions[{i}].value", "message": "no static group has this id"}
                   for gid, i in named.items() if gid not in found or found[gid].type != GroupType.STATIC.value]
            if bad:
                raise ValidationFailed(sorted(bad, key=lambda e: e["field"]))
        try:
            return await groups.create(self.db, spec, now_ms())
        except groups.DuplicateName:
            async with self.db.reader() as s:
                taken = await groups.id_by_name(s, spec.name)
            raise GroupNameTaken(spec.name, taken) from None

    async def listing(self, start: int, max_rows: int) -> tuple[list[dict[str, Any]], int]:
        """A page of the groups by id (``start`` 1-based) and how many there are."""
        async with self.db.reader() as s:
            page, total = await groups.listing(s, start, max_rows)
        return [group_body(g) for g in page], total

    async def get(self, group_id: int) -> dict[str, Any]:
        async with self.db.reader() as s:
            group = await groups.get(s, group_id)
        if group is None:
            raise GroupNotFound(group_id)
        return group_body(group)

    async def delete(self, group_id: int) -> None:
        """Delete the group and its memberships (the contacts and their identity logs stay as they are)."""
        if not await groups.remove(self.db, group_id):
            raise GroupNotFound(group_id)

    async def contacts(self, group_id: int, start: int, max_rows: int) -> tuple[list[dict[str, Any]], int]:
        """A page of the group's live members by id (``start`` 1-based) and how many there are."""
        async with self.db.reader() as s:
            group = await groups.get(s, group_id)
            if group is None:
                raise GroupNotFound(group_id)
            if group.type == GroupType.DYNAMIC.value:
                try:
                    spec = _spec(group, self.normaliser)
                except ValidationFailed as exc:
                    raise GroupConditionsStale(group_id, exc.errors) from None
                members = segments.dynamic_members(spec.conditions, Match(spec.match), self.db.dialect, now_ms())
            else:
                members = segments.static_members(group_id)
            total = await segments.count(s, members)
            page = await segments.page(s, members, start, max_rows) if total >= start else []
            return await views.list_bodies(s, page), total
