"""Groups as rows: create, list, read, delete, and the guard every membership write goes through.

A group can be deleted while a contact write that names it is under way. Memberships are therefore written
only into groups that still exist and are static, read under a ``FOR KEY SHARE`` lock on PostgreSQL (a delete
waits for the write, or the write no longer sees the group), so a deleted group never gains a member and a
vanished one is never a foreign-key error (a 500). SQLite runs one writer at a time: no race to guard.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from stitcher.domain.segments import GroupSpec, GroupType
from stitcher.store.db import Database
from stitcher.store.models import Group


class DuplicateName(Exception):
    """Another group has this name."""


async def joinable(db: Database, session: AsyncSession, group_ids: Iterable[int]) -> set[int]:
    """Those of ``group_ids`` that exist and are static, held (PostgreSQL) until the transaction ends."""
    ids = sorted(set(group_ids))
    if not ids:
        return set()
    q = select(col(Group.id)).where(col(Group.id).in_(ids), col(Group.type) == GroupType.STATIC.value)
    if db.dialect == "postgresql":
        q = q.order_by(col(Group.id)).with_for_update(key_share=True)
    return {g for g in (await session.execute(q)).scalars() if g is not None}


async def create(db: Database, spec: GroupSpec, now: int) -> int:
    """The new group's id; ``DuplicateName`` when the name is taken."""
    try:
        async with db.transaction() as s:
            group = Group(name=spec.name, type=spec.type.value, match=spec.match.value,
                          conditions=list(spec.raw_conditions) or None, created_at=now)
            s.add(group)
            await s.flush()
            assert group.id is not None
            return group.id
    except IntegrityError as exc:
        raise DuplicateName(spec.name) from exc


async def by_ids(session: AsyncSession, ids: Iterable[int]) -> dict[int, Group]:
    found = (await session.execute(select(Group).where(col(Group.id).in_(list(ids))))).scalars()
    return {g.id: g for g in found if g.id is not None}


async def dynamic_names(session: AsyncSession, names: Iterable[str]) -> set[str]:
    """Those of ``names`` that name a dynamic group."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return set()
    return set((await session.execute(select(col(Group.name)).where(
        col(Group.name).in_(wanted), col(Group.type) == GroupType.DYNAMIC.value))).scalars())


async def listing(session: AsyncSession, start: int, max_rows: int) -> tuple[list[Group], int]:
    """The groups ``start``.. (1-based) by id, ``max_rows`` of them, and how many groups there are."""
    total = int((await session.execute(select(func.count()).select_from(Group))).scalar_one())
    if total < start:
        return [], total
    q = select(Group).order_by(col(Group.id)).offset(start - 1).limit(max_rows)
    return list((await session.execute(q)).scalars()), total


async def get(session: AsyncSession, group_id: int) -> Group | None:
    return await session.get(Group, group_id)


async def remove(db: Database, group_id: int) -> bool:
    """Delete the group and its memberships (the foreign key cascades); False if there was none."""
    async with db.transaction() as s:
        result: Any = await s.execute(delete(Group).where(col(Group.id) == group_id))
        return bool(result.rowcount)


async def id_by_name(session: AsyncSession, name: str) -> int | None:
    return (await session.execute(select(col(Group.id)).where(col(Group.name) == name))).scalar_one_or_none()
