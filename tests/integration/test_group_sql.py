"""The SQL of groups: the plan of the seed's check on PostgreSQL (bounded by migration 0008's partial index),
and memberships written while a group is being deleted (never a 500, never a member of a deleted group)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from stitcher.domain.segments import parse_group
from stitcher.store import groups, repo, segments
from stitcher.store.db import Database
from stitcher.store.models import Contact, Group

NO_EXTERNAL_ID = {"name": "No external ID", "type": "dynamic",
                  "conditions": [{"field": "externalCustomerId", "op": "not_set"}]}
SEEDED = 20_000


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", []) for n in _nodes(child))]


async def _plan(url: str, query: Any) -> list[dict[str, Any]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            sql = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
            plan = (await conn.execute(text(f"EXPLAIN (FORMAT JSON) {sql}"))).scalar_one()
            return _nodes(plan[0]["Plan"])
    finally:
        await engine.dispose()


async def test_the_no_external_id_count_and_page_read_the_partial_index(database_url: str) -> None:
    """On PostgreSQL with 20,000 contacts (a third with an external ID, some deleted or merged), the count is an
    index-only scan of ``ix_contacts_live_no_external_id`` and the first page an index range of it, with a
    LIMIT: neither reads the table through."""
    if not database_url.startswith("postgresql"):
        pytest.skip("the plan asserted is PostgreSQL's")
    engine = create_async_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(
                "INSERT INTO contacts (external_customer_id, first_name, created_at, updated_at, deleted_at) "
                "SELECT CASE WHEN g % 3 = 0 THEN 'E' || g END, 'P' || g, 0, 0, CASE WHEN g % 20 = 1 THEN 1 END "
                "FROM generate_series(1, :n) AS g"), {"n": SEEDED})
            await conn.execute(text("UPDATE contacts SET merged_into_id = 1 WHERE id % 50 = 2"))
            await conn.execute(text("VACUUM ANALYZE contacts"))  # autovacuum's work, done now
    finally:
        await engine.dispose()
    spec = parse_group(NO_EXTERNAL_ID)
    members = segments.dynamic_members(spec.conditions, spec.match, "postgresql", 0)
    count = await _plan(database_url, segments.count_query(members))
    page = await _plan(database_url, segments.page_query(members, 1, 500))
    for nodes in (count, page):
        assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes
        assert any(n.get("Index Name") == "ix_contacts_live_no_external_id" for n in nodes), nodes
    assert any(n["Node Type"] == "Index Only Scan" for n in count), count
    assert page[0]["Node Type"] == "Limit", page


async def _seed_group(db: Database) -> tuple[int, int]:
    async with db.transaction() as s:
        contact, group = Contact(created_at=0, updated_at=0), Group(name="Doomed", created_at=0)
        s.add_all([contact, group])
        await s.flush()
        assert contact.id is not None and group.id is not None
        return contact.id, group.id


async def test_a_membership_written_while_its_group_is_deleted_lands_nowhere(database_url: str) -> None:
    """A write that joins a group whose DELETE is in flight waits for it (PostgreSQL) or runs after it
    (SQLite's one writer), then finds no group: no error, no member; the delete itself never fails either."""
    db = Database(database_url)
    try:
        cid, gid = await _seed_group(db)
        if db.dialect == "postgresql":
            engine = create_async_engine(database_url)
            async with engine.connect() as deleter:
                await deleter.execute(text("DELETE FROM groups WHERE id = :g"), {"g": gid})  # not committed yet

                async def join() -> None:
                    async with db.transaction() as s:
                        await repo.add_to_groups(db, s, cid, [gid], None)

                joining = asyncio.create_task(join())
                await asyncio.sleep(0.3)
                assert not joining.done()  # waits on the group row's lock
                await deleter.commit()
                await joining
            await engine.dispose()
        else:
            assert await groups.remove(db, gid)
            async with db.transaction() as s:
                await repo.add_to_groups(db, s, cid, [gid], None)
        async with db.reader() as s:
            assert (await s.execute(text("SELECT count(*) FROM group_members"))).scalar_one() == 0
            assert (await s.execute(text("SELECT count(*) FROM groups"))).scalar_one() == 0
    finally:
        await db.close()


async def test_a_group_deleted_after_a_write_joined_it_takes_the_membership_with_it(database_url: str) -> None:
    """The other order: the write holds the group (KEY SHARE) until it commits; the delete then removes the
    group and the new membership together."""
    db = Database(database_url)
    try:
        cid, gid = await _seed_group(db)
        async with db.transaction() as s:
            await repo.add_to_groups(db, s, cid, [gid], None)
            if db.dialect == "postgresql":
                deleting = asyncio.create_task(groups.remove(db, gid))
                await asyncio.sleep(0.3)
                assert not deleting.done()
        if db.dialect == "postgresql":
            assert await deleting
        else:
            assert await groups.remove(db, gid)
        async with db.reader() as s:
            assert (await s.execute(text("SELECT count(*) FROM group_members"))).scalar_one() == 0
    finally:
        await db.close()
