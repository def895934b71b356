"""Exports (SPEC §4, issue 10): ``stitcher export postgres`` into a second database on the machine's
PostgreSQL and ``stitcher export bigquery`` into files, each run twice, rows compared with the source.

The source is the test's service database (SQLite, or PostgreSQL through TEST_DATABASE_URL), filled through
the HTTP API; the target is a database ``test_export_t<pid>`` made for the session (one schema per test).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from google.cloud.bigquery import SchemaField

from stitcher.exports.command import prune, run
from stitcher.exports.postgres import dsn
from tests.helpers import add_contact, beacon, call, eventually, page_views, sql_write, timeline_ids
from tests.integration.test_merge_and_erase import sql

ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
STREAM_TABLES = ("contacts", "events", "orders", "deletions")


@pytest.fixture(scope="session")
def target_database() -> Iterator[str]:
    """A PostgreSQL database of this session's own to export into, dropped at the end."""
    name = f"test_export_t{os.getpid()}"

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(admin(f"DROP DATABASE IF EXISTS {name}"))
    asyncio.run(admin(f"CREATE DATABASE {name}"))
    yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(admin(f"DROP DATABASE {name} WITH (FORCE)"))


@pytest.fixture
async def target(target_database: str) -> AsyncIterator[tuple[str, str]]:
    """(target URL, a fresh schema) for one test."""
    schema = f"s_{uuid.uuid4().hex[:10]}"
    yield target_database, schema
    conn = await asyncpg.connect(target_database)
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    await conn.close()


async def export_pg(database_url: str, target: tuple[str, str], batch_rows: int = 5000) -> tuple[int, dict[str, int]]:
    """One ``export postgres`` run: its exit code and the rows it says it did per table."""
    err = io.StringIO()
    code = await run(database_url, "postgres", url=target[0], schema=target[1], batch_rows=batch_rows, err=err)
    return code, _summary(err.getvalue()) if code == 0 else {"error": err.getvalue()}  # type: ignore[dict-item]


def _summary(text: str) -> dict[str, int]:
    lines = [line for line in text.splitlines() if line]
    assert [line.split(":")[0] for line in lines] == list(STREAM_TABLES), text
    return {line.split(":")[0]: int(line.split()[1]) for line in lines}


async def target_rows(target: tuple[str, str], table: str, columns: str, where: str = "true"
                      ) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(target[0])
    try:
        return [tuple(r) for r in await conn.fetch(
            f"SELECT {columns} FROM {target[1]}.{table} WHERE {where} ORDER BY 1, 2")]
    finally:
        await conn.close()


async def assert_same(database_url: str, target: tuple[str, str]) -> None:
    """The target holds exactly the source's live contacts, its timeline, orders and their items."""
    contacts = await sql(database_url, "SELECT id, external_customer_id, first_name, deleted_at FROM contacts "
                                       "WHERE merged_into_id IS NULL ORDER BY 1")
    exported = await target_rows(target, "contacts", "id, external_customer_id, first_name, deleted_at")
    assert [(i, e, f, d and int(d.timestamp() * 1000)) for i, e, f, d in exported] == contacts
    events = await sql(database_url, "SELECT id, contact_id, event_id, source, type, visitor_id FROM timeline "
                                     "ORDER BY 1")
    assert await target_rows(target, "events", "id, contact_id, event_id, source, type, visitor_id") == events
    orders = await sql(database_url, "SELECT id, contact_id, external_order_id, status FROM orders ORDER BY 1")
    assert await target_rows(target, "orders", "id, contact_id, external_order_id, status") == orders
    items = [(o, cid, item["externalItemId"]) for o, cid, data in
             await sql(database_url, "SELECT id, contact_id, data FROM orders ORDER BY 1")
             for item in (json.loads(data) if isinstance(data, str) else data)["items"]]
    assert await target_rows(target, "order_items", "order_id, contact_id, external_item_id") == items


def order(ext: str, customer: str, status: str = "INITIALIZED") -> dict[str, Any]:
    return {"externalOrderId": ext, "externalCustomerId": customer, "status": status,
            "date": "2026-11-30T10:11:10+03:00", "totalCost": 59.9, "currency": "uah",
            "items": [{"externalItemId": "SKU-1", "name": "Mug", "quantity": 2, "cost": 27.45},
                      {"externalItemId": "SKU-2", "name": "Cup", "quantity": 1, "cost": 5}]}


async def seed(client: Any) -> dict[str, int]:
    """Contacts with channels, fields and groups, a stitched web history, an API event and orders."""
    vid = str(uuid.uuid4())
    views = page_views(3, prefix="seed")
    await beacon(client, vid, views)
    ann = await add_contact(client, externalCustomerId="C-1", firstName="Ann", visitorIds=[vid],
                            channels=[{"type": "email", "value": "ann@example.com"}],
                            fields=[{"id": 7, "value": "gold"}], groups=[{"name": "vip"}])
    await eventually(lambda: timeline_ids(client, ann), lambda ids: len(ids) == 3, 3.0)
    bob = await add_contact(client, externalCustomerId="C-2", channels=[{"type": "sms", "value": "+380671234567"}])
    status, answer = await call(client, "POST", "/api/v1/event", {
        "eventTypeKey": "cartAbandoned", "keyValue": "C-2", "params": [{"name": "externalCustomerId", "value": "C-2"}]})
    assert status in (200, 202), answer
    status, answer = await call(client, "POST", "/api/v1/orders", {"orders": [order("O-1", "C-1"),
                                                                               order("O-2", "C-2")]})
    assert status == 200, answer
    return {"ann": ann, "bob": bob}


async def test_a_second_export_copies_nothing_and_the_rows_match(client, database_url, target):
    """Exported twice: the first run copies every row, the second none, and the target matches the source."""
    await seed(client)
    code, first = await export_pg(database_url, target)
    assert code == 0 and first["contacts"] == 2 and first["events"] >= 5 and first["orders"] == 2, first
    await assert_same(database_url, target)
    code, second = await export_pg(database_url, target)
    assert code == 0 and second == dict.fromkeys(STREAM_TABLES, 0), second
    await assert_same(database_url, target)
    conn = await asyncpg.connect(target[0])
    row = await conn.fetchrow(f"SELECT email, sms, channels, fields, groups FROM {target[1]}.contacts "
                              "WHERE external_customer_id = 'C-1'")
    await conn.close()
    assert row["email"] == "ann@example.com" and row["sms"] is None
    assert json.loads(row["channels"]) == [{"type": "email", "value": "ann@example.com"}]
    assert json.loads(row["groups"]) == ["vip"] and json.loads(row["fields"]) == [{"id": 7, "value": "gold"}]


async def test_each_kind_of_change_reaches_the_target_on_the_next_run(client, database_url, target):
    """An update, a soft delete, a new order status, a merge and an erase each reach the target on the next
    run, which copies only the rows they changed."""
    people = await seed(client)
    assert (await export_pg(database_url, target))[0] == 0

    status, _ = await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "C-1", "firstName": "Anna"})
    assert status == 200
    code, done = await export_pg(database_url, target)
    assert done == {"contacts": 1, "events": 0, "orders": 0, "deletions": 0}, done
    await assert_same(database_url, target)

    status, _ = await call(client, "POST", "/api/v1/orders", {"orders": [order("O-1", "C-1", "DELIVERED")]})
    assert status == 200
    code, done = await export_pg(database_url, target)
    assert done["orders"] == 1 and done["events"] == 1 and done["deletions"] == 0, done  # the status event
    await assert_same(database_url, target)

    status, _ = await call(client, "DELETE", f"/api/v1/contact/{people['bob']}")
    assert status == 200
    code, done = await export_pg(database_url, target)
    assert done["contacts"] == 1 and done["events"] == 0, done
    await assert_same(database_url, target)

    # a merge: an email-only profile with a web history folds into Ann when the ID arrives with its email
    vid = str(uuid.uuid4())
    await beacon(client, vid, page_views(2, prefix="loser"))
    loser = await add_contact(client, channels=[{"type": "email", "value": "ann2@example.com"}], visitorIds=[vid])
    await eventually(lambda: timeline_ids(client, loser), lambda ids: len(ids) == 2, 3.0)
    assert (await export_pg(database_url, target))[0] == 0
    status, merged = await call(client, "POST", "/api/v1/contact", {
        "externalCustomerId": "C-1", "channels": [{"type": "email", "value": "ann2@example.com"}]})
    assert status == 200 and merged["mergedContactIds"] == [loser], merged
    code, done = await export_pg(database_url, target)
    assert done["events"] == 2 and done["contacts"] == 2, done  # the winner and the merged-away loser
    await assert_same(database_url, target)
    assert {cid for cid, _ in await target_rows(target, "events", "contact_id, 1")} == {people["ann"], people["bob"]}

    status, _ = await call(client, "DELETE", f"/api/v1/contact/{people['ann']}", params={"erase": "true"})
    assert status == 200
    code, done = await export_pg(database_url, target)
    assert code == 0 and done["deletions"] > 0, done
    await assert_same(database_url, target)
    for table in ("contacts", "events", "orders", "order_items"):
        column = "id" if table == "contacts" else "contact_id"
        assert not await target_rows(target, table, f"{column}, 1", f"{column} = {people['ann']}"), table
    assert (await export_pg(database_url, target))[1] == dict.fromkeys(STREAM_TABLES, 0)


async def test_a_transaction_that_commits_after_a_run_reads_reaches_the_next_run(client, database_url, target):
    """PostgreSQL: a transaction still running while a run reads, which commits after a later one (its rows
    stamped below what the run took), reaches the target on the next run."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite writers are serialized: stamps commit in order")
    cid = await add_contact(client, externalCustomerId="C-1")
    conn = await asyncpg.connect(dsn(database_url))
    slow = conn.transaction()
    await slow.start()
    await conn.execute("INSERT INTO timeline (contact_id, event_id, source, type, occurred_at, received_at) "
                       "VALUES ($1, 'slow', 'api', 'slow', 0, 0)", cid)
    status, answer = await call(client, "POST", "/api/v1/event", {"eventTypeKey": "fast", "keyValue": "C-1"})
    assert status == 200, answer
    code, done = await export_pg(database_url, target)
    assert code == 0 and done["events"] == 1, done
    await slow.commit()
    await conn.close()
    code, done = await export_pg(database_url, target)
    assert code == 0 and done["events"] == 1 and done["contacts"] == 0, done
    await assert_same(database_url, target)


async def test_a_failed_batch_names_itself_and_leaves_the_committed_batches(client, database_url, target):
    """A batch the target refuses fails the run (exit 1, its table and batch named); the batches before it
    stay, and once the target is fixed the next run goes on from there without duplicating a row."""
    cid = await add_contact(client, externalCustomerId="C-1")
    for name in ("a", "b", "c", "d", "much-too-long", "f"):
        status, answer = await call(client, "POST", "/api/v1/event", {"eventTypeKey": name, "keyValue": "C-1"})
        assert status in (200, 202), answer
    conn = await asyncpg.connect(target[0])
    await conn.execute(f"CREATE SCHEMA {target[1]}")
    await conn.execute(f"CREATE TABLE {target[1]}.events (id bigint PRIMARY KEY, contact_id bigint NOT NULL, "
                       "event_id text NOT NULL, source text NOT NULL, type varchar(8) NOT NULL, "
                       "occurred_at timestamptz NOT NULL, received_at timestamptz NOT NULL, visitor_id text, "
                       "data jsonb)")
    code, out = await export_pg(database_url, target, batch_rows=2)
    assert code == 1 and "table events, batch 3 failed" in out["error"], out
    assert [t for _, t in await target_rows(target, "events", "id, type")] == ["a", "b", "c", "d"]
    assert await target_rows(target, "contacts", "id, 1") == [(cid, 1)]

    await conn.execute(f"ALTER TABLE {target[1]}.events ALTER COLUMN type TYPE text")
    await conn.close()
    code, done = await export_pg(database_url, target, batch_rows=2)
    assert code == 0 and done == {"contacts": 0, "events": 2, "orders": 0, "deletions": 0}, done
    await assert_same(database_url, target)


async def orders_that_run(conn: Any, schema: str, trigger: str, body: str) -> None:
    """The target's ``orders`` table made ahead with a trigger ``trigger`` running ``body`` on each insert (a
    batch of orders then fails or stalls as the test wants)."""
    await conn.execute(f"CREATE SCHEMA {schema}")
    await conn.execute(f"""CREATE FUNCTION {schema}.{trigger}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN {body}; RETURN NEW; END $$""")
    await conn.execute(f"CREATE TABLE {schema}.orders (id bigint PRIMARY KEY, contact_id bigint NOT NULL, "
                       "external_order_id text NOT NULL, status text NOT NULL, ordered_at timestamptz NOT NULL, "
                       "total_cost double precision, currency text, data jsonb, created_at timestamptz NOT NULL, "
                       "updated_at timestamptz NOT NULL)")
    await conn.execute(f"CREATE TRIGGER {trigger} BEFORE INSERT ON {schema}.orders FOR EACH ROW "
                       f"EXECUTE FUNCTION {schema}.{trigger}()")


async def rerun_without_trigger(conn: Any, database_url: str, target: tuple[str, str], trigger: str) -> None:
    """``orders_that_run``'s trigger dropped (and ``conn`` closed): the next run copies the two orders and
    nothing else again, and the target matches the source."""
    await conn.execute(f"DROP TRIGGER {trigger} ON {target[1]}.orders")
    await conn.close()
    code, done = await export_pg(database_url, target)
    assert code == 0 and done["orders"] == 2 and done["contacts"] == done["events"] == 0, done
    await assert_same(database_url, target)


async def test_a_dropped_connection_fails_the_batch_and_the_next_run_completes(client, database_url, target):
    """The target's connection killed mid-run: exit 1 naming the batch; a rerun brings the target up to date."""
    await seed(client)
    conn = await asyncpg.connect(target[0])
    # the export's own session dies when it first writes an order
    await orders_that_run(conn, target[1], "die", "PERFORM pg_terminate_backend(pg_backend_pid())")
    code, out = await export_pg(database_url, target)
    assert code == 1 and "table orders, batch 1 failed" in out["error"], out
    assert len(await target_rows(target, "events", "id, 1")) >= 5
    await rerun_without_trigger(conn, database_url, target, "die")


async def test_the_cli_prints_one_line_per_table_off_a_terminal(client, database_url, target):
    """``stitcher export postgres`` (a process of its own, its stderr a pipe): one summary line per table,
    exit 0."""
    await seed(client)
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_JSON": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stitcher.cli", "export", "postgres", "--target", target[0], "--schema", target[1],
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    assert _summary(err.decode())["contacts"] == 2


async def test_an_unreachable_target_is_an_error_message_not_a_traceback(database_url, target_database):
    """A target that cannot be opened (no such database, nothing listening): exit 1 and a one-line reason."""
    for url in (target_database + "_missing", "postgresql://postgres@127.0.0.1:1/x"):
        err = io.StringIO()
        assert await run(database_url, "postgres", url=url, err=err) == 1
        assert err.getvalue().startswith("stitcher export: cannot open the target: "), err.getvalue()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_on_a_terminal_the_export_shows_bars_with_rate_and_time_left(client, database_url, target):
    """On a terminal the export draws rich's bars: each table with rows done of total and a rate."""
    await seed(client)
    out = _Terminal()
    assert await run(database_url, "postgres", url=target[0], schema=target[1], err=out) == 0
    text = out.getvalue()
    assert all(table in text for table in STREAM_TABLES) and "2/2" in text and "rows/s" in text, text


# --- BigQuery files ----------------------------------------------------------------------------------------

_PY_TYPES = {"INTEGER": (int,), "FLOAT": (int, float), "STRING": (str,)}


def check_row(schema: list[SchemaField], row: dict[str, Any]) -> None:
    """A row has exactly the schema's columns, each of its type, the required ones set."""
    assert set(row) == {f.name for f in schema}, row
    for f in schema:
        value = row[f.name]
        if value is None:
            assert f.mode == "NULLABLE", (f.name, row)
        elif f.field_type == "TIMESTAMP":
            assert datetime.fromisoformat(value).tzinfo is not None, value
        elif f.field_type != "JSON":
            assert isinstance(value, _PY_TYPES[f.field_type]) and not isinstance(value, bool), (f.name, value)


def bigquery_files(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Every row of every NDJSON file in ``out``, by file name, checked against its table's schema."""
    files: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out.glob("*.ndjson")):
        table = path.name.rsplit("-", 1)[0]
        schema = [SchemaField.from_api_repr(f) for f in json.loads((out / f"{table}.schema.json").read_text())]
        files[path.name] = [json.loads(line) for line in path.read_text().splitlines()]
        for row in files[path.name]:
            check_row(schema, row)
    return files


async def test_bigquery_files_match_their_schemas_and_a_second_run_adds_only_changes(client, database_url,
                                                                                    tmp_path):
    """``export bigquery``: NDJSON per table valid against its BigQuery schema, ``bq load`` lines in the
    README, and a second run writes new files with only what changed (an update and an erase)."""
    people = await seed(client)
    out = tmp_path / "bq"
    assert await run(database_url, "bigquery", out=out, err=io.StringIO()) == 0
    first = bigquery_files(out)
    by_table = {name.rsplit("-", 1)[0]: rows for name, rows in first.items()}
    assert len(by_table["contacts"]) == 2 and len(by_table["orders"]) == 2 and len(by_table["order_items"]) == 4
    assert len(by_table["events"]) == len(await sql(database_url, "SELECT id FROM timeline"))
    readme = (out / "README.md").read_text()
    assert all(f"DATASET.{t} {t}-" in readme for t in ("contacts", "events", "orders", "order_items")), readme

    await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "C-2", "firstName": "Bob"})
    status, _ = await call(client, "DELETE", f"/api/v1/contact/{people['ann']}", params={"erase": "true"})
    assert status == 200
    assert await run(database_url, "bigquery", out=out, err=io.StringIO()) == 0
    second = {name: rows for name, rows in bigquery_files(out).items() if name not in first}
    assert [r["first_name"] for n, r in _rows(second, "contacts")] == ["Bob"]
    assert not [r for n, r in _rows(second, "events")]
    keys = {(k["tbl"], k["col"], k["value"]) for _, k in _rows(second, "keys")}
    assert {("contacts", "id", people["ann"]), ("events", "contact_id", people["ann"]),
            ("contacts", "id", people["bob"])} <= keys
    assert readme.count("## Run") == 1 and (out / "README.md").read_text().count("## Run") == 2
    assert await run(database_url, "bigquery", out=out, err=io.StringIO()) == 0
    assert len(list(out.glob("*.ndjson"))) == len(first) + len(second)


def _rows(files: dict[str, list[dict[str, Any]]], table: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, row) for name, rows in files.items() if name.rsplit("-", 1)[0] == table for row in rows]


# --- a target belongs to its source; pruned tombstones -------------------------------------------------------

async def export_pg_reset(database_url: str, target: tuple[str, str]) -> tuple[int, str]:
    err = io.StringIO()
    return await run(database_url, "postgres", url=target[0], schema=target[1], reset=True, err=err), err.getvalue()


async def test_a_target_is_not_continued_from_another_source_database(client, database_url, target, tmp_path):
    """A target keeps the id of the database it was exported from: a run from another one (here the same
    database given another id, as a restored copy or a second service would have) fails with one line naming
    both and writes nothing; ``--reset`` empties the target and starts over."""
    await seed(client)
    assert (await export_pg(database_url, target))[0] == 0
    out = tmp_path / "bq"
    assert await run(database_url, "bigquery", out=out, err=io.StringIO()) == 0
    (ours,) = await sql(database_url, "SELECT source_id FROM export_source")
    await sql_write(database_url, "UPDATE export_source SET source_id = 'another-database'")
    await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "C-9", "firstName": "New"})

    code, out_pg = await export_pg(database_url, target)
    message = out_pg["error"]  # type: ignore[index]
    assert code == 1 and message.count("\n") == 1 and ours[0] in message and "another-database" in message
    assert "--reset" in message and "Traceback" not in message
    assert len(await target_rows(target, "contacts", "id, 1")) == 2  # nothing written
    err = io.StringIO()
    assert await run(database_url, "bigquery", out=out, err=err) == 1 and ours[0] in err.getvalue()

    code, text = await export_pg_reset(database_url, target)
    assert code == 0, text
    await assert_same(database_url, target)
    assert (await export_pg(database_url, target))[1] == dict.fromkeys(STREAM_TABLES, 0)
    assert await run(database_url, "bigquery", out=out, reset=True, err=io.StringIO()) == 0
    readme = (out / "README.md").read_text().split("## Run")[-1]
    assert "TRUNCATE TABLE DATASET.contacts" in readme and "DATASET.contacts contacts-" in readme, readme
    assert await run(database_url, "bigquery", out=out, err=io.StringIO()) == 0


async def test_prune_deletes_old_tombstones_and_a_target_that_had_not_read_them_must_reset(
        client, database_url, target_database):
    """``export prune --older-than DAYS`` deletes the tombstones older than that and keeps the newer ones; a
    target that had read them goes on, one that had not fails with one line until ``--reset``."""
    read, behind = (target_database, f"s_{uuid.uuid4().hex[:10]}"), (target_database, f"s_{uuid.uuid4().hex[:10]}")
    try:
        people = await seed(client)
        assert (await export_pg(database_url, read))[0] == 0 and (await export_pg(database_url, behind))[0] == 0
        status, _ = await call(client, "DELETE", f"/api/v1/contact/{people['ann']}", params={"erase": "true"})
        assert status == 200
        assert (await export_pg(database_url, read))[0] == 0  # reads Ann's tombstones
        await sql_write(database_url, "UPDATE export_tombstones SET at = 0")  # written long ago
        status, _ = await call(client, "DELETE", f"/api/v1/contact/{people['bob']}", params={"erase": "true"})
        assert status == 200
        (old,) = await sql(database_url, "SELECT count(*) FROM export_tombstones WHERE at = 0")
        (new,) = await sql(database_url, "SELECT count(*) FROM export_tombstones WHERE at > 0")
        assert old[0] > 0 and new[0] > 0

        err = io.StringIO()
        assert await prune(database_url, 1, err=err) == 0
        assert err.getvalue() == f"stitcher export prune: {old[0]} tombstones older than 1 days deleted\n"
        assert await sql(database_url, "SELECT count(*) FROM export_tombstones") == [new]

        code, done = await export_pg(database_url, read)
        assert code == 0 and done["deletions"] == new[0], done
        await assert_same(database_url, read)
        code, out = await export_pg(database_url, behind)
        assert code == 1 and "were pruned" in out["error"] and "--reset" in out["error"], out  # type: ignore[index]
        assert (await export_pg_reset(database_url, behind))[0] == 0
        await assert_same(database_url, behind)
    finally:
        conn = await asyncpg.connect(target_database)
        for schema in (read[1], behind[1]):
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


def test_prune_wants_a_positive_number_of_days(capsys):
    from stitcher.cli import main

    for bad in ("0", "-1", "nan", "x", "1e9"):
        with pytest.raises(SystemExit) as exit_:
            main(["export", "prune", "--older-than", bad])
        assert exit_.value.code == 2 and "--older-than" in capsys.readouterr().err


# --- hostile targets -----------------------------------------------------------------------------------------

def _one_line(text: str) -> None:
    """The failure is said in one line, the last (after the summary lines of the tables done before)."""
    lines = text.splitlines()
    assert lines[-1].startswith("stitcher export: ") and "Traceback" not in text, text
    assert [line for line in lines if line.startswith("stitcher export")] == lines[-1:], text


async def test_a_bad_target_url_or_schema_is_one_line_and_creates_nothing(database_url, target_database, tmp_path):
    """An empty URL (libpq's defaults would pick a local database), another scheme, an impossible port, a
    schema with a NUL or control character, too long, PostgreSQL's own: exit 1, one line, nothing created."""
    cases = [("", "public"), ("http://127.0.0.1/x", "public"), ("postgresql://postgres@127.0.0.1:99999/x", "public"),
             (target_database, "a\x00b"), (target_database, "a\x01b"), (target_database, "x" * 64),
             (target_database, "information_schema"), (target_database, "pg_export"), (target_database, "")]
    for url, schema in cases:
        err = io.StringIO()
        assert await run(database_url, "postgres", url=url, schema=schema, err=err) == 1, (url, schema)
        _one_line(err.getvalue())
        assert "cannot open the target" in err.getvalue()
    conn = await asyncpg.connect(target_database)
    assert not await conn.fetch("SELECT 1 FROM pg_namespace WHERE nspname LIKE 'x%' OR nspname LIKE 'a%b'")
    await conn.close()
    for out in (Path("/etc/hostname"), Path("/etc/hostname/x")):
        err = io.StringIO()
        assert await run(database_url, "bigquery", out=out, err=err) == 1
        _one_line(err.getvalue())


async def test_a_schema_of_someone_elses_tables_is_refused(client, database_url, target):
    """A schema whose ``contacts`` is not an export's (the service's own database, another application): exit
    1 naming the table and its missing columns, and nothing is created or written there."""
    await seed(client)
    conn = await asyncpg.connect(target[0])
    await conn.execute(f"CREATE SCHEMA {target[1]}")
    await conn.execute(f"CREATE TABLE {target[1]}.contacts (id bigint PRIMARY KEY, first_name text)")
    await conn.execute(f"INSERT INTO {target[1]}.contacts VALUES (1, 'theirs')")
    code, out = await export_pg(database_url, target)
    assert code == 1 and "contacts (missing: external_customer_id" in out["error"], out  # type: ignore[index]
    _one_line(out["error"])  # type: ignore[arg-type]
    for reset in (False, True):
        assert await run(database_url, "postgres", url=target[0], schema=target[1], reset=reset,
                         err=io.StringIO()) == 1
    assert [tuple(r) for r in await conn.fetch(f"SELECT * FROM {target[1]}.contacts")] == [(1, "theirs")]
    assert [r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1",
                                           target[1])] == ["contacts"]
    await conn.close()


async def test_a_user_with_table_rights_only_exports_into_a_prepared_schema(client, database_url, target):
    """A warehouse user without CREATE (on the database or the schema) exports into tables made for it; one
    without INSERT on a table fails naming it, one line, the batches before it kept."""
    await seed(client)
    assert (await export_pg(database_url, target))[0] == 0  # the owner prepares the schema
    role = f"exp_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(target[0])
    await conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        await conn.execute(f"GRANT USAGE ON SCHEMA {target[1]} TO {role}")
        await conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA {target[1]} "
                           f"TO {role}")
        await conn.execute(f"REVOKE CREATE ON SCHEMA {target[1]} FROM {role}")
        as_role = (target[0].replace("postgres@", f"{role}@", 1), target[1])
        await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "C-1", "firstName": "Anna"})
        code, done = await export_pg(database_url, as_role)
        assert code == 0 and done["contacts"] == 1, done
        await assert_same(database_url, target)

        await conn.execute(f"REVOKE INSERT ON {target[1]}.events FROM {role}")
        await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "C-2", "firstName": "Bo"})
        await call(client, "POST", "/api/v1/event", {"eventTypeKey": "late", "keyValue": "C-2"})
        code, out = await export_pg(database_url, as_role)
        assert code == 1 and "table events, batch 1 failed: InsufficientPrivilegeError" in out["error"], out
        _one_line(out["error"])  # type: ignore[arg-type]
        assert await target_rows(target, "contacts", "first_name, id", "first_name = 'Bo'")  # committed before
    finally:
        await conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {target[1]} FROM {role}")
        await conn.execute(f"REVOKE ALL ON SCHEMA {target[1]} FROM {role}")
        await conn.execute(f"DROP ROLE {role}")
        await conn.close()


async def test_an_interrupted_run_says_so_and_keeps_the_committed_batches(client, database_url, target):
    """``stitcher export`` stopped by SIGTERM while a batch is being written: exit 130, one line; the batch
    is rolled back (the contacts before it stay) and the next run completes the target."""
    await seed(client)
    conn = await asyncpg.connect(target[0])
    await orders_that_run(conn, target[1], "slow", "PERFORM pg_sleep(60)")
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_JSON": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stitcher.cli", "export", "postgres", "--target", target[0], "--schema", target[1],
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await eventually(lambda: conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                                               "AND query LIKE '%orders%'"), lambda n: n == 1, 30.0)
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 130, err
    last = err.decode().splitlines()[-1]
    assert last == "stitcher export: interrupted; the target keeps the batches committed before", err
    assert "Traceback" not in err.decode()
    assert len(await target_rows(target, "contacts", "id, 1")) == 2
    assert not await target_rows(target, "orders", "id, 1")
    await rerun_without_trigger(conn, database_url, target, "slow")


async def test_bigquery_deletes_are_a_file_of_their_own_with_the_delete_lines_for_them(client, database_url, tmp_path):
    """An erase reaches BigQuery as the run's ``keys-<run>.ndjson`` (the ids per table and column, valid
    against ``keys.schema.json``), and the README's section for the run loads it and gives one ``bq query``
    DELETE per table and column it names — before the run's rows are appended; an update alone deletes by
    ``contacts.id`` only."""
    people = await seed(client)
    out = tmp_path / "bq"
    assert await run(database_url, "bigquery", out=out, err=io.StringIO()) == 0
    await call(client, "POST", "/api/v1/contact", {"externalCustomerId": "C-2", "firstName": "Bob"})
    assert await run(database_url, "bigquery", out=out, err=io.StringIO()) == 0
    update = (out / "README.md").read_text().split("## Run")[-1]
    assert update.count("DELETE FROM") == 1 and "DELETE FROM DATASET.contacts WHERE id IN" in update, update

    status, _ = await call(client, "DELETE", f"/api/v1/contact/{people['ann']}", params={"erase": "true"})
    assert status == 200
    before = set(out.glob("keys-*.ndjson"))
    assert await run(database_url, "bigquery", out=out, err=io.StringIO()) == 0
    (keys_file,) = set(out.glob("keys-*.ndjson")) - before
    keys = {(k["tbl"], k["col"], k["value"]) for k in bigquery_files(out)[keys_file.name]}
    assert {("contacts", "id", people["ann"]), ("events", "contact_id", people["ann"]),
            ("orders", "contact_id", people["ann"]), ("order_items", "contact_id", people["ann"])} <= keys, keys
    # and each of her deleted rows by its own key (the erase's tombstones)
    assert {(t, c) for t, c, _ in keys} == {("contacts", "id"), ("events", "contact_id"), ("events", "id"),
                                           ("orders", "contact_id"), ("orders", "id"),
                                           ("order_items", "contact_id"), ("order_items", "order_id")}, keys
    erase = (out / "README.md").read_text().split("## Run")[-1]
    lines = erase.splitlines()
    load = next(i for i, line in enumerate(lines) if f"DATASET._stitcher_keys {keys_file.name}" in line)
    deletes = [i for i, line in enumerate(lines) if "DELETE FROM" in line]
    assert len(deletes) == 7 and min(deletes) > load, erase
    for table, column in (("contacts", "id"), ("events", "contact_id"), ("orders", "contact_id"),
                          ("order_items", "contact_id")):
        assert f'DELETE FROM DATASET.{table} WHERE {column} IN (SELECT value FROM DATASET._stitcher_keys ' \
               f'WHERE tbl = "{table}" AND col = "{column}")' in erase, erase
