"""Database.retry: collisions with other transactions are retried, then become Contention (503); others are not."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from stitcher.store.db import Contention, Database, is_contention


def failing(errors: list[Exception]):  # type: ignore[no-untyped-def]
    calls = 0

    async def work() -> str:
        nonlocal calls
        calls += 1
        if errors:
            raise errors.pop(0)
        return "done"

    return work, lambda: calls


@pytest.fixture
async def db():  # type: ignore[no-untyped-def]
    database = Database("sqlite+aiosqlite:///:memory:")  # never connected: retry does no I/O of its own
    yield database
    await database.close()


def test_collisions_are_recognised_on_both_backends() -> None:
    """Deadlocks, serialization failures and a locked SQLite database are collisions; a bad statement is not."""
    assert is_contention(DBAPIError("x", {}, Exception("deadlock detected")))
    assert is_contention(DBAPIError("x", {}, Exception("could not serialize access due to concurrent update")))
    assert is_contention(OperationalError("x", {}, Exception("database is locked")))
    assert not is_contention(OperationalError("x", {}, Exception("no such table: contacts")))


async def test_a_locked_sqlite_database_is_retried_until_it_succeeds(db: Database) -> None:
    """Another process holding SQLite's write lock is waited out, not answered 503 at once."""
    work, calls = failing([OperationalError("x", {}, Exception("database is locked"))] * 3)
    assert await db.retry(work) == "done"
    assert calls() == 4


async def test_a_collision_that_outlives_the_attempts_is_contention(db: Database) -> None:
    """Past the attempts a collision becomes Contention, which the edge answers 503."""
    work, calls = failing([DBAPIError("x", {}, Exception("deadlock detected"))] * 10)
    with pytest.raises(Contention):
        await db.retry(work, attempts=3)
    assert calls() == 3


async def test_other_errors_are_not_retried(db: Database) -> None:
    """A statement that is wrong fails at once; an ``also`` error is retried and then re-raised as itself."""
    work, calls = failing([OperationalError("x", {}, Exception("no such table: contacts"))])
    with pytest.raises(OperationalError):
        await db.retry(work)
    assert calls() == 1
    work, calls = failing([IntegrityError("x", {}, Exception("unique"))] * 10)
    with pytest.raises(IntegrityError):
        await db.retry(work, also=(IntegrityError,), attempts=2)
    assert calls() == 2
