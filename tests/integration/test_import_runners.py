"""Two runners of one import at once — a process resuming an import another process still runs, as with
``serve --workers N`` — cutting their chunks at different rows: the import ends FINISHED only once every row
is applied, each row once."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from stitcher.app import init_app, normaliser
from stitcher.imports.handlers import IMPORTS
from stitcher.imports.runner import ImportRunner
from stitcher.store.db import Database
from tests.helpers import call, sql_scalar
from tracker.settings import Settings

ROWS = 600


async def test_a_second_runner_with_other_chunk_bounds_never_ends_the_import_early(
        aiohttp_client: Any, settings: Settings) -> None:
    """Runner A (chunks of 40) and runner B (chunks of 70, resuming it at once): every row lands, once, and the
    status says FINISHED with all rows processed."""
    client = await aiohttp_client(init_app(dataclasses.replace(settings, import_chunk_rows=40)))
    assert settings.database_url is not None
    db = Database(settings.database_url)
    other = ImportRunner(db, normaliser(settings), chunk_rows=70)
    try:
        contacts = [{"externalCustomerId": f"R-{i}", "channels": [{"type": "email", "value": f"r{i}@example.com"}]}
                    for i in range(ROWS)]
        status, answer = await call(client, "POST", "/api/v1/contacts",
                                    {"contacts": contacts, "dedupeOn": "externalCustomerId"})
        assert status == 200, answer
        other.start_resuming()  # the import is unfinished: B takes it up while A runs it
        await asyncio.wait_for(asyncio.gather(client.app[IMPORTS].wait(), other.wait()), 120)
        status, report = await call(client, "GET", f"/api/v1/importstatus/{answer['asyncSessionId']}")
        assert report["status"] == "FINISHED", report
        assert report["processed"] == ROWS and report["created"] == ROWS
        assert sorted(m["index"] for m in report["mapping"]) == list(range(ROWS))
        assert await sql_scalar(settings.database_url, "SELECT count(*) FROM contacts") == ROWS
        assert await sql_scalar(settings.database_url, "SELECT count(*) FROM import_rows") == ROWS
    finally:
        await other.close()
        await db.close()
