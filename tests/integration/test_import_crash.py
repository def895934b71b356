"""A real ``stitcher serve`` SIGKILLed during a 3000-row import: on restart the import resumes and finishes,
and at every moment each row is whole — its contact, identifiers, group and per-row result landed together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import auth
from tests.helpers import eventually, sql_scalar
from tests.integration.test_crash import service, service_env

pytestmark = pytest.mark.slow
ROWS = 3000


async def _status(http: aiohttp.ClientSession, url: str, session_id: str) -> dict[str, Any]:
    async with http.get(f"{url}/api/v1/importstatus/{session_id}", headers=auth()) as r:
        body = await r.json()
        assert r.status == 200, body
        return dict(body)


async def assert_rows_whole(database_url: str) -> int:
    """Every applied row's contact holds its external ID, email and group, and no contact exists without its
    row's result (never half a row); returns how many rows were applied."""
    applied = await sql_scalar(database_url, "SELECT count(*) FROM import_rows")
    assert await sql_scalar(database_url, "SELECT next_row FROM imports") == applied
    assert await sql_scalar(database_url, "SELECT count(*) FROM contacts") == applied
    whole = await sql_scalar(database_url, (
        "SELECT count(*) FROM import_rows r JOIN contacts c ON c.id = r.contact_id "
        "JOIN identifiers i ON i.contact_id = c.id AND i.kind = 'email' "
        "JOIN group_members m ON m.contact_id = c.id "
        "WHERE r.action = 'created' AND c.external_customer_id = 'K' || r.idx "
        "AND i.value = 'k' || r.idx || '@example.com'"))
    assert whole == applied
    return int(applied)


async def test_import_killed_mid_way_resumes_and_every_contact_is_whole(clean_redis: str, database_url: str,
                                                                         tmp_path: Path) -> None:
    """SIGKILL after some chunks committed: the applied rows are whole, and the restart finishes the rest."""
    body = {"contacts": [{"externalCustomerId": f"K{i}", "channels": [{"type": "email", "value": f"k{i}@example.com"}]}
                         for i in range(ROWS)], "dedupeOn": "email", "groupNames": ["imported"]}
    env = service_env(clean_redis, database_url, tmp_path, IMPORT_CHUNK_ROWS="50", WORKER_ENABLED="0")
    async with aiohttp.ClientSession() as http:
        async with service(env, tmp_path / "serve-1.log") as server:
            async with http.post(f"{server.url}/api/v1/contacts", json=body, headers=auth()) as r:
                started = await r.json()
                assert r.status == 200, started
            session_id = started["asyncSessionId"]
            progress = await eventually(lambda: _status(http, server.url, session_id),
                                        lambda s: s["processed"] >= 300, 30)
            await server.kill()
        assert 0 < progress["processed"] < ROWS, progress
        applied = await assert_rows_whole(database_url)
        assert progress["processed"] <= applied < ROWS
        assert await sql_scalar(database_url, "SELECT status FROM imports") == "IMPORTING"

        async with service(env, tmp_path / "serve-2.log") as server:
            report = await eventually(lambda: _status(http, server.url, session_id),
                                      lambda s: s["status"] in ("FINISHED", "ERROR"), 60)
            assert report["status"] == "FINISHED", report
            assert (report["created"], report["updated"], report["failedContacts"]) == (ROWS, 0, [])
            assert [m["index"] for m in report["mapping"]] == list(range(ROWS))
            assert len({m["contactId"] for m in report["mapping"]}) == ROWS
        assert await assert_rows_whole(database_url) == ROWS
