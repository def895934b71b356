"""Bulk import (``POST /api/v1/contacts``, ``GET /api/v1/importstatus/{id}``) on real SQL and Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stitcher.imports.handlers import IMPORTS
from tests.conftest import auth
from tests.helpers import add_contact as add
from tests.helpers import call, eventually, sql_scalar
from tests.helpers import get_contact as contact


async def start(client: Any, body: dict[str, Any]) -> str:
    status, answer = await call(client, "POST", "/api/v1/contacts", body)
    assert status == 200, answer
    assert answer["id"] == 0 and len(answer["asyncSessionId"]) == 36
    return str(answer["asyncSessionId"])


async def finished(client: Any, session_id: str) -> dict[str, Any]:
    """The status once the import has ended (bounded wait)."""
    await asyncio.wait_for(client.app[IMPORTS].wait(), 60)
    status, body = await call(client, "GET", f"/api/v1/importstatus/{session_id}")
    assert status == 200, body
    assert body["status"] in ("FINISHED", "ERROR"), body
    return dict(body)


async def run(client: Any, contacts: list[Any], **options: Any) -> dict[str, Any]:
    return await finished(client, await start(client, {"contacts": contacts, "dedupeOn": "email", **options}))


def email(value: str, **extra: Any) -> dict[str, Any]:
    return {"channels": [{"type": "email", "value": value}], **extra}


def ids(report: dict[str, Any]) -> list[int]:
    return [m["contactId"] for m in report["mapping"]]


async def test_import_creates_updates_and_maps_rows(client: Any) -> None:
    """New rows create contacts, a matching email updates its contact; counts and mapping say which row went where."""
    existing = await add(client, {"firstName": "Old", **email("ann@example.com")})
    report = await run(client, [email("Ann@Example.com", firstName="Ann", externalCustomerId="C1"),
                                email("bob@example.com", firstName="Bob")])
    assert report["status"] == "FINISHED" and report["total"] == 2
    assert (report["created"], report["updated"], report["skipped"], report["failedContacts"]) == (1, 1, 0, [])
    assert report["mapping"][0] == {"index": 0, "contactId": existing, "action": "updated"}
    assert report["mapping"][1]["action"] == "created"
    ann = await contact(client, existing)
    assert ann["firstName"] == "Ann" and ann["externalCustomerId"] == "C1"
    bob = await contact(client, report["mapping"][1]["contactId"])
    assert bob["firstName"] == "Bob" and bob["channels"] == [{"type": "email", "value": "bob@example.com"}]


async def test_status_life_cycle_and_unknown_session(client: Any) -> None:
    """The status is STARTED or IMPORTING right after the answer and FINISHED later; an unknown id is a 404."""
    session_id = await start(client, {"contacts": [email(f"u{i}@example.com") for i in range(50)],
                                      "dedupeOn": "email"})
    status, early = await call(client, "GET", f"/api/v1/importstatus/{session_id}")
    assert status == 200 and early["status"] in ("STARTED", "IMPORTING", "FINISHED")
    assert (await finished(client, session_id))["created"] == 50
    for unknown in ("00000000-0000-0000-0000-000000000000", "nope", "x" * 500):
        status, body = await call(client, "GET", f"/api/v1/importstatus/{unknown}")
        assert status == 404 and body["error"] == "import_not_found"


async def test_bad_rows_fail_alone(client: Any) -> None:
    """A bad row is reported with its 0-based index and reason; the other rows land."""
    report = await run(client, [email("ok1@example.com"), email("not-an-email"), "a string",
                                {"channels": [{"type": "sms", "value": "+380671234567"}]},
                                email("ok2@example.com")])
    assert report["created"] == 2
    failed = {f["index"]: f["error"] for f in report["failedContacts"]}
    assert set(failed) == {1, 2, 3}
    assert "not a valid email" in failed[1] and "object" in failed[2] and "dedupe" in failed[3]
    assert [m["index"] for m in report["mapping"]] == [0, 4]


async def test_email_match_gets_the_rows_external_id_and_ids_are_never_stolen(client: Any) -> None:
    """An email match without an ID gets the row's ID; if every match holds another ID a new contact is made."""
    unidentified = await add(client, email("shared@example.com"))
    other = await add(client, email("family@example.com", externalCustomerId="X1"))
    report = await run(client, [email("shared@example.com", externalCustomerId="N1"),
                                email("family@example.com", externalCustomerId="N2")])
    assert ids(report)[0] == unidentified and report["mapping"][1]["action"] == "created"
    assert (await contact(client, other))["externalCustomerId"] == "X1"
    assert (await contact(client, ids(report)[1]))["externalCustomerId"] == "N2"


async def test_duplicates_in_one_request_become_one_contact(client: Any) -> None:
    """Rows naming one person (same external ID or same email) land on one contact, later rows winning."""
    report = await run(client, [
        email("dup@example.com", firstName="First", lastName="Kept", externalCustomerId="D1"),
        email("dup@example.com", firstName="Second"),
        {"externalCustomerId": "D1", "channels": [{"type": "sms", "value": "+380671234567"}], "firstName": "Third"},
    ])
    assert len(set(ids(report))) == 1 and report["created"] == 1 and report["updated"] == 2
    person = await contact(client, ids(report)[0])
    assert (person["firstName"], person["lastName"], person["externalCustomerId"]) == ("Third", "Kept", "D1")
    assert {c["type"] for c in person["channels"]} == {"email", "sms"}


async def test_contact_fields_limit_what_is_written_on_matched_contacts(client: Any) -> None:
    """contactFields: only those fields change on a matched contact; a new contact gets every field."""
    existing = await add(client, {"firstName": "Keep", "lastName": "Old", **email("cf@example.com")})
    report = await run(client, [email("cf@example.com", firstName="Nope", lastName="New"),
                                email("cf2@example.com", firstName="All", lastName="Fields")],
                       contactFields=["lastName", "email"])
    person = await contact(client, existing)
    assert (person["firstName"], person["lastName"]) == ("Keep", "New")
    created = await contact(client, ids(report)[1])
    assert (created["firstName"], created["lastName"]) == ("All", "Fields")


async def test_group_names_put_every_row_in_the_groups(client: Any) -> None:
    """groupNames: every landed row's contact joins these groups (created when missing)."""
    report = await run(client, [email("g1@example.com"), email("g2@example.com")], groupNames=["vip", "import"])
    for cid in ids(report):
        assert sorted(g["name"] for g in (await contact(client, cid))["groups"]) == ["import", "vip"]


async def test_rows_own_groups_join_like_add_update(client: Any, database_url: str) -> None:
    """A row's own ``groups`` (names, ``{id?, name, type?}`` objects, one object) put its contact in them,
    created when missing, beside ``groupNames``; a later row of the same person adds its groups; a skipped
    row joins nothing and a row whose groups are bad fails alone."""
    await add(client, {**email("old@example.com"), "groups": ["existing"]})
    gone = await add(client, email("gone-g@example.com"))
    assert (await call(client, "DELETE", f"/api/v1/contact/{gone}"))[0] == 200
    report = await run(client, [
        email("g1@example.com", groups=["existing", "fresh"]),
        email("g2@example.com", groups=[{"id": 9, "name": "fresh", "type": "static"}, {"name": "objects"}]),
        email("g3@example.com", groups={"name": "single", "types": ["x"]}),
        email("g1@example.com", groups=["second-row"]),
        email("gone-g@example.com", groups=["never"]),
        email("g4@example.com", groups=[{"name": "x" * 257}]),
        email("old@example.com", groups=[{"name": " "}, "existing"]),
    ], groupNames=["all"])
    assert report["status"] == "FINISHED" and [f["index"] for f in report["failedContacts"]] == [5]
    assert [s["index"] for s in report["skippedContacts"]] == [4]
    by_row = {m["index"]: m["contactId"] for m in report["mapping"]}

    async def groups(cid: int) -> list[str]:
        return sorted(g["name"] for g in (await contact(client, cid))["groups"])

    assert by_row[0] == by_row[3]
    assert await groups(by_row[0]) == ["all", "existing", "fresh", "second-row"]
    assert await groups(by_row[1]) == ["all", "fresh", "objects"]
    assert await groups(by_row[2]) == ["all", "single"]
    assert await groups(by_row[6]) == ["all", "existing"]
    assert await sql_scalar(database_url, "SELECT count(*) FROM group_members WHERE contact_id = :c", c=gone) == 0
    names = ["existing", "fresh", "objects", "single", "second-row", "all", "never"]
    counts = {n: await sql_scalar(database_url, "SELECT count(*) FROM groups WHERE name = :n", n=n) for n in names}
    assert counts == {**dict.fromkeys(names[:-1], 1), "never": 0}


async def test_rows_parsed_in_a_parser_process_land_alike_and_a_dead_parser_is_replaced(client: Any) -> None:
    """With a parser process (the service's default), chunks parsed there while the previous chunk's SQL runs
    land exactly as parsed in the service: bad rows fail alone, duplicates across chunks become one contact,
    rows' groups apply. A parser process that dies is replaced by parsing in the service."""
    runner = client.app[IMPORTS]
    runner.chunk_rows, runner.parse_workers = 40, 1
    rows: list[Any] = [email(f"pp{i}@example.com", firstName=f"P{i}", groups=[f"pg{i % 3}"]) for i in range(150)]
    rows[7] = email("not an email")
    rows[149] = email("pp3@example.com", firstName="Last")
    try:
        report = await run(client, rows)
        assert report["status"] == "FINISHED" and report["processed"] == 150
        assert [f["index"] for f in report["failedContacts"]] == [7]
        by_row = {m["index"]: m["contactId"] for m in report["mapping"]}
        assert len(by_row) == 149 and len(set(by_row.values())) == 148 and by_row[149] == by_row[3]
        person = await contact(client, by_row[3])
        assert person["firstName"] == "Last" and [g["name"] for g in person["groups"]] == ["pg0"]
        assert runner._parser is not None
        for process in list(runner._parser._processes.values()):
            process.kill()
            process.join()
        again = await run(client, [email("after@example.com"), email("after2@example.com")])
        assert again["status"] == "FINISHED" and again["created"] == 2 and runner.parse_workers == 0
    finally:
        await runner.close()


async def test_deleted_match_skipped_or_restored(client: Any) -> None:
    """A deleted match is skipped (reported) by default and restored with restoreDeleted."""
    gone = await add(client, email("gone@example.com", firstName="Gone"))
    assert (await call(client, "DELETE", f"/api/v1/contact/{gone}"))[0] == 200
    skipped = await run(client, [email("gone@example.com", firstName="Back")])
    assert skipped["skipped"] == 1 and skipped["mapping"] == [] and skipped["created"] == 0
    assert skipped["skippedContacts"][0]["contactId"] == gone
    restored = await run(client, [email("gone@example.com", firstName="Back")], restoreDeleted=True)
    assert restored["restored"] == 1 and ids(restored) == [gone]
    assert (await contact(client, gone))["firstName"] == "Back"


async def test_dedupe_on_sms_id_and_field(client: Any) -> None:
    """dedupeOn sms, id and fieldId match on the phone, the contact id and a custom field's value."""
    by_phone = await add(client, {"channels": [{"type": "sms", "value": "+380671234567"}]})
    by_field = await add(client, {"externalCustomerId": "F1", "fields": [{"id": 7, "value": "gold-1"}],
                                  **email("f@example.com")})
    sms = await run(client, [{"channels": [{"type": "sms", "value": "380671234567"}], "firstName": "P"}],
                    dedupeOn="sms")
    assert ids(sms) == [by_phone] and sms["updated"] == 1
    by_id = await run(client, [{"id": by_phone, "firstName": "I"}, {"id": 999999, "firstName": "?"}], dedupeOn="id")
    assert ids(by_id) == [by_phone] and by_id["failedContacts"][0]["index"] == 1
    field = await run(client, [email("other@example.com", fields=[{"id": 7, "value": "gold-1"}], firstName="Fld")],
                      dedupeOn="fieldId", fieldId=7)
    assert ids(field) == [by_field]
    assert (await contact(client, by_field))["firstName"] == "Fld"


async def test_identity_log_records_created_and_assigned(client: Any) -> None:
    """Created contacts and external IDs given by an import are in the identity log."""
    unidentified = await add(client, email("log@example.com"))
    report = await run(client, [email("log@example.com", externalCustomerId="L1"), email("new@example.com")])
    status, entries = await call(client, "GET", f"/api/v1/contact/{unidentified}/identity-log")
    assert status == 200
    assert any(e["action"] == "assigned_external_id" for e in (entries if isinstance(entries, list)
                                                                 else entries["entries"]))
    status, entries = await call(client, "GET", f"/api/v1/contact/{ids(report)[1]}/identity-log")
    assert any(e["action"] == "created" for e in (entries if isinstance(entries, list) else entries["entries"]))


async def test_3000_rows_land_and_3001_is_refused(client: Any, database_url: str) -> None:
    """3000 rows are one import (every contact whole); 3001 is a 400 naming contacts, and nothing is stored."""
    rows = [email(f"bulk{i}@example.com", externalCustomerId=f"B{i}") for i in range(3000)]
    report = await run(client, rows)
    assert report["created"] == 3000 and len(set(ids(report))) == 3000
    assert await sql_scalar(database_url, "SELECT count(*) FROM identifiers") == 3000
    status, body = await call(client, "POST", "/api/v1/contacts", {"contacts": [*rows, email("x@example.com")],
                                                                  "dedupeOn": "email"})
    assert status == 400 and body["errors"][0]["field"] == "contacts"
    assert await sql_scalar(database_url, "SELECT count(*) FROM imports") == 1


@pytest.mark.parametrize(("body", "field"), [
    ([], "body"),
    ({"contacts": [], "dedupeOn": "email"}, "contacts"),
    ({"contacts": {"a": 1}, "dedupeOn": "email"}, "contacts"),
    ({"contacts": [{}]}, "dedupeOn"),
    ({"contacts": [{}], "dedupeOn": "phone"}, "dedupeOn"),
    ({"contacts": [{}], "dedupeOn": ["email"]}, "dedupeOn"),
    ({"contacts": [{}], "dedupeOn": "fieldId"}, "fieldId"),
    ({"contacts": [{}], "dedupeOn": "email", "contactFields": "firstName"}, "contactFields"),
    ({"contacts": [{}], "dedupeOn": "email", "contactFields": ["password"]}, "contactFields[0]"),
    ({"contacts": [{}], "dedupeOn": "email", "groupNames": [""]}, "groupNames[0]"),
    ({"contacts": [{}], "dedupeOn": "email", "groupNames": "vip"}, "groupNames"),
    ({"contacts": [{}], "dedupeOn": "email", "restoreDeleted": "yes"}, "restoreDeleted"),
])
async def test_hostile_bodies_are_400_naming_the_field(client: Any, body: Any, field: str,
                                                       database_url: str) -> None:
    """A bad import body is a 400 naming the field, and no import is stored."""
    status, answer = await call(client, "POST", "/api/v1/contacts", body)
    assert status == 400, answer
    assert field in [e["field"] for e in answer["errors"]]
    assert await sql_scalar(database_url, "SELECT count(*) FROM imports") == 0


@pytest.mark.parametrize("raw", [
    b'{"contacts": [{}], "dedupeOn": "email", "dedupeOn": "sms"}',
    b'{"contacts": [{"firstName": "a\\u0000b"}], "dedupeOn": "email"}',
    b'{"contacts": ' + b"[" * 200 + b"]" * 200 + b', "dedupeOn": "email"}',
    b'{"contacts": [{"externalCustomerId": 123456789012345678901234567890}], "dedupeOn": "email"}',
    b"not json",
])
async def test_hostile_json_is_400(client: Any, raw: bytes) -> None:
    """Duplicate keys, NUL, deep nesting, huge numbers and broken JSON are each a 400, never a 500."""
    r = await client.post("/api/v1/contacts", data=raw, headers={**auth(), "Content-Type": "application/json"})
    assert r.status == 400, await r.text()
    assert (await r.json())["error"]


async def test_hostile_rows_fail_alone(client: Any) -> None:
    """Rows of wrong types, huge values or nested junk fail alone; the import still finishes."""
    report = await run(client, [
        {"channels": {"type": "email", "value": "x@example.com"}},
        email("ok@example.com", firstName="x" * 100_000),
        email("ok@example.com", externalCustomerId=["a"]),
        email("ok@example.com", fields=[1, 2]),
        email("fine@example.com", address={"a": {"b": {"c": "d"}}}),
        None,
    ])
    assert report["status"] == "FINISHED"
    # row 0's single channel object is read as a list of one, as platform clients send it
    assert [m["index"] for m in report["mapping"]] == [0, 4]
    assert {f["index"] for f in report["failedContacts"]} == {1, 2, 3, 5}


async def test_a_row_id_of_5000_digits_fails_alone(client: Any) -> None:
    """A quoted id past 4,300 digits made int() raise and ended the whole import in ERROR, no row applied."""
    report = await run(client, [email("a5k@example.com", id="9" * 5000, externalCustomerId="C-5K"),
                                email("b5k@example.com", contactId="9" * 5000), email("c5k@example.com")],
                       dedupeOn="id")
    assert report["status"] == "FINISHED", report["description"]
    assert [f["index"] for f in report["failedContacts"]] == [0, 1, 2]  # row 2: no id to dedupe on
    report = await run(client, [email("a5k@example.com", id="9" * 5000), email("d5k@example.com")])
    assert report["status"] == "FINISHED" and [m["index"] for m in report["mapping"]] == [1]


async def test_import_and_subscribe_for_one_email_end_as_one_contact(client: Any, database_url: str) -> None:
    """An import row and a concurrent subscribe for the same new email end as ONE contact, whoever wins."""
    for round_ in range(5):
        mail = f"race{round_}@example.com"
        session_id, (status, sub) = await asyncio.gather(
            start(client, {"contacts": [email(f"pad{round_}-{i}@example.com") for i in range(200)] + [email(mail)],
                           "dedupeOn": "email"}),
            call(client, "POST", "/api/v1/contact/subscribe", {"contact": email(mail)}))
        assert status == 200, sub
        report = await finished(client, session_id)
        assert report["mapping"][-1]["contactId"] == sub["id"]
        holders = await sql_scalar(database_url, "SELECT count(DISTINCT contact_id) FROM identifiers "
                                                 "WHERE kind = 'email' AND value = :v", v=mail)
        assert holders == 1


async def test_two_imports_racing_on_one_external_id_end_as_one_contact(client: Any, database_url: str) -> None:
    """Two concurrent imports naming the same new external ID create it once (the other row updates it)."""
    rows = [email(f"twin{i}@example.com", externalCustomerId=f"T{i}") for i in range(300)]
    first, second = await asyncio.gather(start(client, {"contacts": rows, "dedupeOn": "email"}),
                                         start(client, {"contacts": rows[::-1], "dedupeOn": "email"}))
    a, b = await finished(client, first), await finished(client, second)
    assert a["created"] + b["created"] == 300 and a["updated"] + b["updated"] == 300
    assert await sql_scalar(database_url, "SELECT count(*) FROM contacts") == 300


async def test_status_survives_a_restart(aiohttp_client: Any, settings: Any) -> None:
    """The status is read from SQL: a new app on the same database reports a finished import."""
    from stitcher.app import init_app

    first = await aiohttp_client(init_app(settings))
    session_id = await start(first, {"contacts": [email("keep@example.com")], "dedupeOn": "email"})
    await finished(first, session_id)
    await first.close()
    second = await aiohttp_client(init_app(settings))
    status, body = await call(second, "GET", f"/api/v1/importstatus/{session_id}")
    assert status == 200 and body["status"] == "FINISHED" and body["created"] == 1


async def test_unfinished_import_resumes_on_start(aiohttp_client: Any, settings: Any, database_url: str) -> None:
    """An import stopped after its first chunk resumes at the next row when the service starts again."""
    from stitcher.app import init_app

    app = init_app(settings)
    first = await aiohttp_client(app)
    runner = first.app[IMPORTS]
    runner.chunk_rows = 100
    gate = asyncio.Event()
    original = runner._run

    async def stalled(import_id: str) -> None:
        await gate.wait()
        await original(import_id)

    runner._run = stalled  # type: ignore[method-assign]
    session_id = await start(first, {"contacts": [email(f"r{i}@example.com") for i in range(250)],
                                     "dedupeOn": "email"})
    await first.close()  # stopped before it ran: STARTED in SQL
    assert await sql_scalar(database_url, "SELECT status FROM imports") == "STARTED"
    second = await aiohttp_client(init_app(settings))
    report = await eventually(lambda: call(second, "GET", f"/api/v1/importstatus/{session_id}"),
                              lambda r: r[1]["status"] == "FINISHED", 30)
    assert report[1]["created"] == 250 and len(report[1]["mapping"]) == 250


async def test_held_events_seam_gets_every_landed_contact_with_its_keys(client: Any, monkeypatch: Any) -> None:
    """Each chunk hands every created or updated contact, with its identity keys, to held_events.attach."""
    from stitcher.imports import chunk

    calls: list[dict[int, set[str]]] = []

    async def attach(db: Any, session: Any, keys_by_contact: Any) -> int:
        assert session.in_transaction()
        calls.append({cid: set(keys) for cid, keys in keys_by_contact.items()})
        return 0

    monkeypatch.setattr(chunk.held_events, "attach", attach)
    report = await run(client, [email("held@example.com", externalCustomerId="H1"), email("bad"),
                                {"channels": [{"type": "email", "value": "held2@example.com"},
                                              {"type": "sms", "value": "+380671234567"}]}])
    first, second = ids(report)
    assert calls == [{first: {"ext:H1", "email:held@example.com"},
                      second: {"email:held2@example.com", "sms:+380671234567"}}]


async def test_a_failing_chunk_ends_the_import_in_error_naming_the_applied_rows(client: Any, monkeypatch: Any,
                                                                             database_url: str) -> None:
    """An unexpected failure in a later chunk: ERROR says exactly which rows were applied; those are whole."""
    from stitcher.imports import chunk

    client.app[IMPORTS].chunk_rows = 100
    original = chunk.plan_import
    calls = 0

    def failing(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("boom")
        return original(*args, **kwargs)

    monkeypatch.setattr(chunk, "plan_import", failing)
    report = await run(client, [email(f"e{i}@example.com") for i in range(250)])
    assert report["status"] == "ERROR"
    assert report["description"] == "rows 0-99 applied (see mapping); rows 100-249 not applied: RuntimeError"
    assert [m["index"] for m in report["mapping"]] == list(range(100)) and report["processed"] == 100
    assert await sql_scalar(database_url, "SELECT count(*) FROM contacts") == 100
    assert await sql_scalar(database_url, "SELECT count(*) FROM identifiers") == 100


async def test_a_chunk_failing_after_its_bulk_writes_leaves_none_of_its_rows(client: Any, monkeypatch: Any,
                                                                            database_url: str) -> None:
    """The second chunk fails after its contacts, identifiers, groups and per-row results were sent (binary
    COPY and array statements on PostgreSQL): none of them stays, the first chunk's rows are whole."""
    from stitcher.imports import chunk

    client.app[IMPORTS].chunk_rows = 100
    original = chunk.import_sessions.record_chunk
    calls = 0

    async def failing(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        await original(*args, **kwargs)
        if calls == 2:
            raise RuntimeError("boom")

    monkeypatch.setattr(chunk.import_sessions, "record_chunk", failing)
    report = await run(client, [email(f"e{i}@example.com", firstName=f"E{i}", externalCustomerId=f"X{i}",
                                      groups=["Own"]) for i in range(250)], groupNames=["Shared"])
    assert report["status"] == "ERROR"
    assert report["description"] == "rows 0-99 applied (see mapping); rows 100-249 not applied: RuntimeError"
    assert [m["index"] for m in report["mapping"]] == list(range(100)) and report["created"] == 100
    for table, rows in (("contacts", 100), ("identifiers", 100), ("group_members", 200), ("import_rows", 100),
                        ("identity_log", 100)):
        assert await sql_scalar(database_url, f"SELECT count(*) FROM {table}") == rows, table
    landed = await contact(client, report["mapping"][99]["contactId"])
    assert (landed["firstName"], landed["externalCustomerId"]) == ("E99", "X99")


async def test_a_duplicate_row_in_a_bulk_write_is_an_integrity_error_and_writes_nothing(client: Any,
                                                                                       database_url: str) -> None:
    """A unique violation inside a bulk write (a ``COPY`` on PostgreSQL) is SQLAlchemy's ``IntegrityError``, which
    the import's retry expects, and its transaction leaves nothing."""
    from sqlalchemy.exc import IntegrityError

    from stitcher.store import import_sessions
    from stitcher.store.multirow import insert_rows

    db = client.app[IMPORTS].db
    async with db.transaction() as s:
        await import_sessions.create(s, "0" * 36, 2, {}, None, 0)
    with pytest.raises(IntegrityError):
        async with db.transaction() as s:
            await insert_rows(db, s, import_sessions.ROWS, ("import_id", "idx", "action"),
                              [("0" * 36, 0, "created"), ("0" * 36, 1, "created"), ("0" * 36, 0, "created")])
    assert await sql_scalar(database_url, "SELECT count(*) FROM import_rows") == 0


async def test_rows_with_many_identifiers_fit_the_lock_table(client: Any) -> None:
    """3000 rows of four identifiers each in one chunk still land: a transaction locks at most a bounded
    number of identity keys (PostgreSQL's shared lock table is 6,400 locks by default)."""
    client.app[IMPORTS].chunk_rows = 3000
    rows = [{"externalCustomerId": f"M{i}", "channels": [
        {"type": "email", "value": f"m{i}@example.com"}, {"type": "sms", "value": f"+38067{1000000 + i}"},
        {"type": "mobilepush", "value": f"tok-{i}"}]} for i in range(3000)]
    report = await run(client, rows)
    assert report["status"] == "FINISHED", report["description"]
    assert report["created"] == 3000


async def test_a_chunk_splits_by_lock_keys_in_row_order() -> None:
    """A parsed chunk splits into consecutive parts of at most the key budget, bad rows kept in place."""
    from stitcher.app import normaliser
    from stitcher.imports.parse import parse_rows
    from stitcher.imports.request import parse_import
    from tracker.settings import Settings

    request = parse_import({"contacts": [email(f"s{i}@example.com", externalCustomerId=f"S{i}") if i != 3
                                         else "bad" for i in range(10)], "dedupeOn": "email"})
    parts = parse_rows(request, 0, 10, normaliser(Settings())).split(4)
    assert [(p.start, p.end) for p in parts] == [(0, 2), (2, 5), (5, 7), (7, 9), (9, 10)]
    assert parts[1].bad == [(3, parts[1].bad[0][1])] and [g[0] for g in parts[1].good] == [2, 4]


async def test_subscribe_waits_for_the_import_chunk_holding_its_email(client: Any, database_url: str,
                                                                      monkeypatch: Any) -> None:
    """A subscribe for an email an import chunk has locked waits for the chunk, then finds its contact."""
    from stitcher.http_input import DB
    from stitcher.store import bulk
    from tests.helpers import identity_lock_waiters

    entered, gate = asyncio.Event(), asyncio.Event()
    original = bulk.find

    async def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()  # the chunk holds its identity locks now
        await gate.wait()
        return await original(*args, **kwargs)

    monkeypatch.setattr(bulk, "find", held)
    session_id = await start(client, {"contacts": [email("held-race@example.com", firstName="Imp")],
                                      "dedupeOn": "email"})
    await asyncio.wait_for(entered.wait(), 10)
    subscribe = asyncio.create_task(call(client, "POST", "/api/v1/contact/subscribe",
                                         {"contact": email("held-race@example.com")}))
    await identity_lock_waiters(client.app[DB], database_url, 1)
    gate.set()
    status, sub = await subscribe
    report = await finished(client, session_id)
    assert status == 200 and sub["status"] == "updated"
    assert report["mapping"] == [{"index": 0, "contactId": sub["id"], "action": "created"}]


async def test_import_bodies_past_the_intake_limit_are_a_429_and_the_others_land(client: Any) -> None:
    """While INTAKE bodies are still arriving (slow clients), one more import is a 429 with Retry-After — a
    burst of 16 MiB bodies cannot exhaust the memory — and the slow ones then land as usual."""
    import json

    from stitcher.imports.runner import INTAKE

    release = asyncio.Event()

    def slow_body(i: int) -> Any:
        raw = json.dumps({"dedupeOn": "email", "contacts": [email(f"slow{i}@example.com")]}).encode()

        async def chunks() -> Any:
            yield raw[:10]
            await release.wait()
            yield raw[10:]
        return chunks()

    slow = [asyncio.ensure_future(client.post("/api/v1/contacts", data=slow_body(i),
                                              headers={**auth(), "Content-Type": "application/json"}))
            for i in range(INTAKE)]
    for _ in range(200):  # until every slow body is being read
        if client.server.app[IMPORTS].bodies_arriving == INTAKE:
            break
        await asyncio.sleep(0.01)
    r = await client.post("/api/v1/contacts", json={"dedupeOn": "email", "contacts": [email("one@example.com")]},
                          headers=auth())
    answer = await r.json()
    assert r.status == 429 and r.headers["Retry-After"] == "1", answer
    assert answer["error"] == "too_many_imports" and answer["status"] == 429
    release.set()
    for response in await asyncio.gather(*slow):
        assert response.status == 200, await response.text()
        report = await finished(client, (await response.json())["asyncSessionId"])
        assert report["status"] == "FINISHED" and report["created"] == 1
    # and the slot is free again
    assert (await run(client, [email("one@example.com")]))["created"] == 1


async def test_a_resume_scan_never_starts_an_import_this_process_is_running(client: Any, monkeypatch: Any) -> None:
    """An import submitted while the start-up scan for unfinished imports runs is STARTED in SQL and already
    running here: the scan must not start it a second time (a second run could finish an import the first
    ended in ERROR)."""
    from collections import Counter

    from stitcher.imports.runner import ImportRunner

    runs: Counter[str] = Counter()
    real_run = ImportRunner._run

    async def counted(self: ImportRunner, import_id: str) -> None:
        runs[import_id] += 1
        await real_run(self, import_id)

    monkeypatch.setattr(ImportRunner, "_run", counted)
    runner = client.server.app[IMPORTS]
    async with runner._slots, runner._slots:  # every run slot taken: the import waits, STARTED
        session_id = await start(client, {"contacts": [email("resume@example.com")], "dedupeOn": "email"})
        await runner._resume_when_reachable()  # the scan a start-up runs
    report = await finished(client, session_id)
    assert report["status"] == "FINISHED" and report["created"] == 1
    assert runs[session_id] == 1


async def test_an_import_another_runner_ended_stays_ended_and_takes_no_more_rows(client: Any) -> None:
    """Two processes resuming one import both run it: once one has ended it (ERROR), the other applies no
    further chunk and cannot turn it FINISHED — the first end wins and its description stays exact."""
    from stitcher.http_input import DB
    from stitcher.store import import_sessions

    db = client.server.app[DB]
    async with db.transaction() as s:
        await import_sessions.create(s, "00000000-0000-4000-8000-000000000001", 10, {"contacts": []}, None, 1)
    async with db.transaction() as s:
        assert await import_sessions.next_row(s, "00000000-0000-4000-8000-000000000001") == 0
        await import_sessions.end(s, "00000000-0000-4000-8000-000000000001", "ERROR", "rows 0-4 applied", 2)
    async with db.transaction() as s:
        assert await import_sessions.next_row(s, "00000000-0000-4000-8000-000000000001") is None
        await import_sessions.end(s, "00000000-0000-4000-8000-000000000001", "FINISHED", "10 rows processed", 3)
    status, report = await call(client, "GET", "/api/v1/importstatus/00000000-0000-4000-8000-000000000001")
    assert status == 200, report
    assert report["status"] == "ERROR" and report["description"] == "rows 0-4 applied"
