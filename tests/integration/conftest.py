"""These tests run the service on SQLite unless TEST_DATABASE_URL names PostgreSQL."""

import pytest


@pytest.fixture(autouse=True)
def _sqlite_threads_end_before_the_loop(sqlite_threads_finished: None) -> None:
    """Set up first, torn down last: see ``sqlite_threads_finished`` in tests/conftest.py."""
