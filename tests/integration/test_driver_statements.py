"""The hot path's statements sent straight through asyncpg on PostgreSQL (``stitcher/store/pg_driver.py``)
are part of the session's transaction: they roll back with it, commit with it, see what the session wrote
before them, and fail as SQLAlchemy's errors do. On SQLite the same calls take SQLAlchemy's path, and the
same assertions hold."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from stitcher.domain.identifiers import IdentifierKind, Identity
from stitcher.store import contact_rows, pg_driver
from stitcher.store.db import Database, lock_id
from stitcher.store.models import Contact
from tests.helpers import sql_scalar

EMAIL = IdentifierKind.EMAIL


class _Boom(Exception):
    pass


@pytest.fixture
async def db(database_url: str):  # type: ignore[no-untyped-def]
    database = Database(database_url)
    yield database
    await database.close()


async def _create(db: Database, s, ext: str) -> int:  # type: ignore[no-untyped-def]
    return await contact_rows.create(db, s, ext, {"first_name": "Ann"}, [(EMAIL, f"{ext}@example.com", None)],
                                     1_000, None)


async def test_a_failure_after_a_driver_statement_leaves_nothing_behind(db: Database, database_url: str) -> None:
    """A contact created (and an advisory lock taken) through the driver is gone when the transaction fails."""
    with pytest.raises(_Boom):
        async with db.transaction() as s:
            await db.lock_keys(s, ["ext:RB-1"])
            cid = await _create(db, s, "RB-1")
            assert cid > 0
            raise _Boom
    assert await sql_scalar(database_url, "SELECT count(*) FROM contacts WHERE external_customer_id = 'RB-1'") == 0
    assert await sql_scalar(database_url, "SELECT count(*) FROM identifiers WHERE value = 'rb-1@example.com'") == 0
    assert await sql_scalar(database_url, "SELECT count(*) FROM identity_log") == 0


async def test_driver_statements_commit_with_the_session_and_see_its_earlier_writes(
        db: Database, database_url: str) -> None:
    """An ORM row added before a driver statement is visible to it; both are committed together."""
    async with db.transaction() as s:
        await s.execute(insert(Contact).values(external_customer_id="RB-2", created_at=1, updated_at=1))
        earlier = (await s.execute(select(Contact.id).where(Contact.external_customer_id == "RB-2"))).scalar_one()
        locked = await contact_rows.lock(s, [earlier])
        assert [row.external_id for row in locked.values()] == ["RB-2"]
        cid = await _create(db, s, "RB-3")
    assert await sql_scalar(
        database_url, "SELECT count(*) FROM contacts WHERE external_customer_id IN ('RB-2', 'RB-3')") == 2
    assert await sql_scalar(database_url, f"SELECT count(*) FROM identifiers WHERE contact_id = {cid}") == 1


async def test_a_pending_orm_row_is_flushed_before_a_driver_statement(db: Database) -> None:
    """A row only added to the session (not yet flushed) is seen by the next statement, whichever path."""
    async with db.transaction() as s:
        s.add(Contact(external_customer_id="RB-4", created_at=1, updated_at=1))
        found = await contact_rows.lookup(s, Identity(external_id="RB-4"), [EMAIL])
        assert found.by_external_id is not None


async def test_a_unique_violation_through_the_driver_is_sqlalchemys_integrity_error(db: Database) -> None:
    """Two contacts with one external ID: the same ``IntegrityError`` the retry logic catches on any path."""
    async with db.transaction() as s:
        await _create(db, s, "RB-5")
    with pytest.raises(IntegrityError):
        async with db.transaction() as s:
            await _create(db, s, "RB-5")


async def test_the_driver_is_there_on_postgresql_only(db: Database) -> None:
    """SQLite keeps SQLAlchemy's path: no driver connection is handed out for it."""
    async with db.transaction() as s:
        await s.execute(insert(Contact).values(external_customer_id="RB-6", created_at=1, updated_at=1))
        driver = await pg_driver.driver(s)
        assert (driver is not None) == (db.dialect == "postgresql")




async def test_a_lock_wait_cut_short_fails_as_it_would_through_sqlalchemy(db: Database) -> None:
    """A statement the server cancels (a lock wait past ``statement_timeout``) raises the same SQLAlchemy
    exception through the driver as through ``session.execute``, its parameters hidden (invariant 10)."""
    if db.dialect != "postgresql":
        pytest.skip("the driver path is PostgreSQL's")
    raised = []
    async with db.transaction() as holder:
        await db.lock_keys(holder, ["ext:RB-7"])
        for through_driver in (True, False):
            with pytest.raises(DBAPIError) as caught:
                async with db.transaction() as s:
                    await s.execute(text("SET LOCAL statement_timeout = '100ms'"))
                    if through_driver:
                        await db.lock_keys(s, ["ext:RB-7"])
                    else:
                        await s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_id("ext:RB-7")})
            raised.append(caught.value)
    assert type(raised[0]) is type(raised[1]) and "statement timeout" in str(raised[0])
    assert "RB-7" not in str(raised[0]) and str(lock_id("ext:RB-7")) not in str(raised[0])
