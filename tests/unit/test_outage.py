"""is_outage: what a database restart raises through the driver is told from what a statement gets wrong."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from stitcher.store.db import SqlOutage, is_outage


def wrapped(cause: BaseException) -> DBAPIError:
    """The generic DBAPIError SQLAlchemy's asyncpg dialect raises, with the driver's error as its cause."""
    try:
        raise DBAPIError("SELECT 1", {}, cause) from cause
    except DBAPIError as exc:
        return exc


@pytest.mark.parametrize("cause", [
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.exceptions.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
    BrokenPipeError(32, "Broken pipe"),
    FileNotFoundError(2, "No such file or directory"),  # a unix socket gone with its server
    ConnectionRefusedError(111, "Connection refused"),
])
def test_a_restart_is_an_outage(cause: BaseException) -> None:
    """Each error a PostgreSQL restart raised in a real run is an outage (503), also wrapped by SQLAlchemy."""
    assert is_outage(wrapped(cause))
    assert isinstance(wrapped(cause), SqlOutage)
    assert is_outage(cause)


@pytest.mark.parametrize("error", [
    wrapped(asyncpg.exceptions.UniqueViolationError("duplicate key")),
    wrapped(asyncpg.exceptions.DataError("invalid input syntax")),
    IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed")),
    ValueError("bad"),
    KeyError("x"),
])
def test_a_statement_error_is_not_an_outage(error: Exception) -> None:
    """A constraint, a bad value or a bug stays what it is: never answered as a 503."""
    assert not is_outage(error)
    assert not isinstance(error, SqlOutage)


def test_sqlalchemy_operational_errors_stay_outages() -> None:
    """OperationalError (SQLite's "unable to open database", a lost connection) was a 503 before and still is."""
    assert is_outage(OperationalError("SELECT 1", {}, Exception("unable to open database file")))
