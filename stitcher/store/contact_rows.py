"""Lean Core statements for writing one contact (add/update, PUT, subscribe): the hot path's SQL.

Every statement is built once, at import, with bind parameters (expanding ones for lists), so a call only
binds values and SQLAlchemy finds the compiled form in its cache: no ORM identity map, no flush, no refresh.
A call costs one lookup (contact id, external ID, every channel and whether events are held under its
keys, in one UNION ALL) and one write: on PostgreSQL a new contact with its identifiers and audit row is one
statement, and so is an update (the row locked and read as it was, updated, its new identifiers inserted);
SQLite takes a few more. On PostgreSQL they go straight through the session's asyncpg connection
(``pg_driver``); other audit rows go in one insert at commit (``repo.audit``). The tables and profile
columns are ``stitcher/store/tables.py``'s, shared with ``stitcher/store/bulk.py`` (the import's set-based
statements).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    String,
    and_,
    bindparam,
    exists,
    insert,
    literal_column,
    null,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from stitcher.domain.identifiers import IdentifierKind, Identity
from stitcher.domain.rules import Candidate, Lookup
from stitcher.store import audit, pg_driver, repo
from stitcher.store.db import Database
from stitcher.store.tables import API_EVENTS, CONTACTS, IDENTIFIERS, LINKS, by_column, one_of, pg_one_of

_C, _I, _L, _E = CONTACTS.c, IDENTIFIERS.c, LINKS.c, API_EVENTS.c
_ROW = (_C.id, _C.external_customer_id, _C.deleted_at, _C.updated_at, _C.merged_into_id)
# how a lookup row was found: 0 by contact id, 1 by external ID, 2 by a channel (kind, value); 3 says that
# events are held under one of the request's keys
_BY_ID, _BY_EXT, _BY_CHANNEL, _HELD = 0, 1, 2, 3


@dataclass(frozen=True)
class _Statements:
    lock: Any
    open_links: Any


def _statements(one: Callable[[Any, str], Any]) -> _Statements:
    return _Statements(
        lock=select(*_ROW).where(one(_C.id, "ids")).order_by(_C.id).with_for_update(),
        open_links=(select(_L.id, _L.visitor_id, _L.contact_id, _L.stitched_at)
                    .where(one(_L.visitor_id, "vids"), _L.unlinked_at.is_(None))),
    )


@lru_cache(maxsize=64)
def _lookup(pairs: int, held: int = 0) -> Any:
    """The lookup for a request with ``pairs`` channels: one ``(kind = :kN AND value = :vN)`` per channel, so
    each is a probe of the (kind, value) index whatever plan the database keeps for the statement (two
    ``= ANY`` arrays let PostgreSQL's generic plan scan every identifier of the kind); with ``held`` keys
    (``:h0`` …), one more row when an event is held under one of them."""
    parts = [
        select(literal_column(str(_BY_ID)).label("via"), null().cast(String).label("kind"),
               null().cast(String).label("value"), *_ROW)
        .where(_C.id == bindparam("cid", type_=BigInteger)),
        select(literal_column(str(_BY_EXT)), null().cast(String), null().cast(String), *_ROW)
        .where(_C.external_customer_id == bindparam("ext", type_=String)),
    ]
    if pairs:
        parts.append(
            select(literal_column(str(_BY_CHANNEL)), _I.kind, _I.value, *_ROW)
            .join_from(IDENTIFIERS, CONTACTS, _C.id == _I.contact_id)
            .where(or_(*[and_(_I.kind == bindparam(f"k{i}", type_=String), _I.value == bindparam(f"v{i}", type_=String))
                         for i in range(pairs)]),
                   _C.deleted_at.is_(None), _C.merged_into_id.is_(None)))
    if held:
        parts.append(select(literal_column(str(_HELD)), null().cast(String), null().cast(String),
                            *[null() for _ in _ROW])
                     .where(exists().where(_E.held_key.in_([bindparam(f"h{i}", type_=String)
                                                            for i in range(held)]))))
    return union_all(*parts)


_PG, _OTHER = _statements(pg_one_of), _statements(one_of)


def _for(session: AsyncSession) -> _Statements:
    return _PG if session.get_bind().dialect.name == "postgresql" else _OTHER


_INSERT_CONTACT = insert(CONTACTS).returning(_C.id)
_PG_TEXT_COLUMNS, _PG_JSON_COLUMNS = ("first_name", "last_name", "language_code"), ("address", "fields")
# PostgreSQL: the contact, its identifiers and its "created" audit row in one statement (the CTE's
# INSERT … RETURNING feeds the other two)
_PG_CREATE = text("""
    WITH c AS (
        INSERT INTO contacts (external_customer_id, first_name, last_name, language_code, address, fields,
                              created_at, updated_at)
        VALUES (:ext, :first_name, :last_name, :language_code, CAST(:address AS jsonb), CAST(:fields AS jsonb),
                :now, :now)
        RETURNING id
    ), i AS (
        INSERT INTO identifiers (contact_id, kind, value, device, created_at)
        SELECT c.id, u.k, u.v, u.d, :now
        FROM c, unnest(CAST(:kinds AS text[]), CAST(:values AS text[]), CAST(:devices AS text[])) AS u(k, v, d)
        ON CONFLICT (contact_id, kind, value) DO NOTHING
    ), a AS (
        INSERT INTO identity_log (contact_id, action, detail, at, request_id)
        SELECT c.id, 'created', CAST(:detail AS jsonb), :now, :request_id FROM c
    )
    SELECT id FROM c
""")
_UPDATE_CONTACT = update(CONTACTS).where(_C.id == bindparam("target_id"))
_UNLINK = update(LINKS).where(_L.id == bindparam("link_id")).values(unlinked_at=bindparam("at"))
_LINK = insert(LINKS)
_PG_LINK = text("INSERT INTO visitor_links (visitor_id, contact_id, linked_at) "
                "SELECT v, :cid, :now FROM unnest(CAST(:vids AS text[])) AS v")


@lru_cache(maxsize=64)
def _pg_update(columns: tuple[str, ...]) -> Any:
    """``update_locked``'s statement setting these columns (JSON ones bound as text), built once per set of
    columns: the row locked and read as it was, updated, and its new identifiers inserted."""
    unknown = set(columns) - set(CONTACTS.c.keys())
    assert not unknown, unknown  # the names come from the code (``by_column``), never from a request
    sets = ", ".join(f"{c} = CAST(CAST(:{c} AS text) AS jsonb)" if c in _PG_JSON_COLUMNS else f"{c} = :{c}"
                     for c in columns)
    return text(f"""
        WITH old AS (
            SELECT id, external_customer_id, deleted_at, merged_into_id FROM contacts
            WHERE id = :target_id FOR UPDATE
        ), u AS (
            UPDATE contacts SET {sets} FROM old WHERE contacts.id = old.id
        ), i AS (
            INSERT INTO identifiers (contact_id, kind, value, device, created_at)
            SELECT old.id, n.k, n.v, n.d, :updated_at
            FROM old, unnest(CAST(:kinds AS text[]), CAST(:values AS text[]), CAST(:devices AS text[])) AS n(k, v, d)
            ON CONFLICT (contact_id, kind, value) DO NOTHING
        )
        SELECT id, external_customer_id, deleted_at, merged_into_id FROM old""")


class _Row:
    """An asyncpg record read as SQLAlchemy's rows are (``row.column``)."""

    __slots__ = ("_record",)

    def __init__(self, record: Any) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        return self._record[name]


@dataclass(frozen=True)
class Locked:
    """A contact row as it is under its ``FOR UPDATE`` lock."""

    id: int
    external_id: str | None
    deleted: bool
    merged: bool


@dataclass(frozen=True)
class OpenLink:
    """A visitor's open link to a contact; ``stitched`` once its anonymous history is on the timeline."""

    id: int
    visitor_id: str
    contact_id: int
    stitched: bool


def candidate(row: Any) -> Candidate:
    """A contact row (or ORM object) as the identity rules see it."""
    return Candidate(row.id, row.external_customer_id, row.deleted_at is not None, row.updated_at / 1000)


async def lookup(session: AsyncSession, identity: Identity, kinds: Sequence[IdentifierKind]) -> Lookup:
    """Every contact the request's identifiers point at, in one query (merged contacts never, deleted ones
    only by contact id or external ID)."""
    return (await lookup_held(session, identity, kinds, ()))[0]


async def lookup_held(session: AsyncSession, identity: Identity, kinds: Sequence[IdentifierKind],
                      held_keys: Sequence[str]) -> tuple[Lookup, bool]:
    """``lookup``, and in the same query whether events are held under any of ``held_keys`` (locked by the
    caller, so none can be held under them meanwhile)."""
    wanted = list(dict.fromkeys((k, v) for k, v in identity.channels if k in kinds))
    params: dict[str, Any] = {"cid": identity.contact_id, "ext": identity.external_id}
    for i, (kind, value) in enumerate(wanted):
        params[f"k{i}"], params[f"v{i}"] = kind.value, value
    for i, key in enumerate(held_keys):
        params[f"h{i}"] = key
    statement = _lookup(len(wanted), len(held_keys))
    if (conn := await pg_driver.driver(session)) is not None:
        rows: Any = [_Row(r) for r in await conn.fetch(statement, params)]
    else:
        rows = await session.execute(statement, params)
    by_contact_id = by_external_id = None
    held = False
    by_channel: dict[tuple[IdentifierKind, str], list[Candidate]] = {pair: [] for pair in wanted}
    for row in rows:
        if row.via == _BY_ID:
            if row.merged_into_id is None:
                by_contact_id = candidate(row)
        elif row.via == _BY_EXT:
            by_external_id = candidate(row)
        elif row.via == _HELD:
            held = True
        else:
            by_channel[(IdentifierKind(row.kind), row.value)].append(candidate(row))
    return Lookup(by_contact_id, by_external_id, {k: tuple(v) for k, v in by_channel.items()}), held


async def lock_rows(session: AsyncSession, ids: Sequence[int]) -> Sequence[Any]:
    """``SELECT … FOR UPDATE`` of these contacts, in one statement ordered by id (the lock order's step 2): their
    id, external ID, ``deleted_at``, ``updated_at`` and ``merged_into_id``; erased ones are missing."""
    return (await session.execute(_for(session).lock, {"ids": list(ids)})).all()


async def lock(session: AsyncSession, ids: Sequence[int]) -> dict[int, Locked]:
    """The contacts under their lock (``lock_rows``)."""
    if (conn := await pg_driver.driver(session)) is not None:
        rows: Any = [_Row(r) for r in await conn.fetch(_PG.lock, {"ids": list(ids)})]
    else:
        rows = await lock_rows(session, ids)
    return {r.id: Locked(r.id, r.external_customer_id, r.deleted_at is not None, r.merged_into_id is not None)
            for r in rows}


async def create(db: Database, session: AsyncSession, external_id: str | None, profile: Mapping[str, Any],
                 channels: Sequence[tuple[IdentifierKind, str, str | None]], now: int,
                 request_id: str | None) -> int:
    """A new contact with its channels and its "created" audit row; returns its id. One statement on
    PostgreSQL; elsewhere (or for a profile column that statement does not name) two, the audit row going
    with the transaction's others (``audit.record``)."""
    detail = {"externalCustomerId": external_id}
    columns = by_column(profile)
    if db.dialect != "postgresql" or not columns.keys() <= {*_PG_TEXT_COLUMNS, *_PG_JSON_COLUMNS}:
        values = {**columns, "external_customer_id": external_id, "created_at": now, "updated_at": now}
        cid = int((await session.execute(_INSERT_CONTACT, values)).scalar_one())
        await repo.add_identifiers(db, session, cid, channels)
        audit.record(session, cid, "created", request_id, **detail)
        return cid
    params = {c: columns.get(c) for c in _PG_TEXT_COLUMNS}
    # as the Core insert does: a JSON column given as None holds JSON null, one not given SQL NULL
    params.update({c: orjson.dumps(columns[c]).decode() if c in columns else None for c in _PG_JSON_COLUMNS})
    params.update(ext=external_id, now=now, detail=orjson.dumps(detail).decode(), request_id=request_id,
                  kinds=[k.value for k, _, _ in channels], values=[v for _, v, _ in channels],
                  devices=[d for _, _, d in channels])
    conn = await pg_driver.driver(session)
    assert conn is not None
    return int(await conn.fetchval(_PG_CREATE, params))


async def update_locked(db: Database, session: AsyncSession, contact_id: int, changes: Mapping[str, Any],
                        channels: Sequence[tuple[IdentifierKind, str, str | None]], now: int) -> Locked | None:
    """Lock the contact (``FOR UPDATE``), set profile attributes (and ``external_customer_id``,
    ``deleted_at`` when given) and ``updated_at``, and give it these channels; returns the row as it was
    under the lock, before the update (None if erased), for the caller to check that it is still the row it
    decided on, rolling back otherwise. One statement on PostgreSQL; elsewhere three."""
    values = {**by_column(changes), "updated_at": now}
    if (conn := await pg_driver.driver(session)) is None:
        rows = await lock(session, [contact_id])
        if contact_id in rows:
            await session.execute(_UPDATE_CONTACT, {**values, "target_id": contact_id})
            await repo.add_identifiers(db, session, contact_id, channels)
        return rows.get(contact_id)
    for column in _PG_JSON_COLUMNS:  # as SQLAlchemy's JSON type binds it: None is JSON null
        if column in values:
            values[column] = orjson.dumps(values[column]).decode()
    row = await conn.fetchrow(_pg_update(tuple(values)), {
        **values, "target_id": contact_id, "kinds": [k.value for k, _, _ in channels],
        "values": [v for _, v, _ in channels], "devices": [d for _, _, d in channels]})
    if row is None:
        return None
    return Locked(row["id"], row["external_customer_id"], row["deleted_at"] is not None,
                  row["merged_into_id"] is not None)


async def open_links(session: AsyncSession, visitor_ids: Sequence[str]) -> dict[str, OpenLink]:
    """The open link of each of these visitors that has one."""
    if not visitor_ids:
        return {}
    params = {"vids": list(visitor_ids)}
    if (conn := await pg_driver.driver(session)) is not None:
        rows: Any = [_Row(r) for r in await conn.fetch(_PG.open_links, params)]
    else:
        rows = await session.execute(_OTHER.open_links, params)
    return {r.visitor_id: OpenLink(r.id, r.visitor_id, r.contact_id, r.stitched_at is not None) for r in rows}


async def unlink(session: AsyncSession, link_id: int, now: int) -> None:
    params = {"link_id": link_id, "at": now}
    if (conn := await pg_driver.driver(session)) is not None:
        await conn.execute(_UNLINK, params)
    else:
        await session.execute(_UNLINK, params)


async def link(session: AsyncSession, contact_id: int, visitor_ids: Sequence[str], now: int) -> None:
    """Open links from these visitors to the contact (their earlier open links closed before)."""
    if not visitor_ids:
        return
    if (conn := await pg_driver.driver(session)) is not None:
        await conn.execute(_PG_LINK, {"vids": list(visitor_ids), "cid": contact_id, "now": now})
    else:
        await session.execute(_LINK, [{"visitor_id": v, "contact_id": contact_id, "linked_at": now}
                                      for v in visitor_ids])
