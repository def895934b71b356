"""Set-based statements: find, lock and write many contacts at once, a few round trips however many rows.

Written for the bulk import and general enough for the single-contact add/update: "upsert these contacts,
identifiers and group memberships in one go" (their identity-log rows go through ``audit.record_all``).
Inserts are one statement a table (``multirow.insert_many``); the caller holds the identity keys
(``Database.lock_keys``) before calling ``lock_contacts`` and writing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    and_,
    bindparam,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from stitcher.domain.identifiers import IdentifierKind
from stitcher.domain.rules import Candidate
from stitcher.store import contact_rows, groups, pg_driver
from stitcher.store.db import Database
from stitcher.store.multirow import insert_many, insert_returning_ids, insert_rows, pg_arrays, pg_unnest, pg_value
from stitcher.store.tables import CONTACTS, IDENTIFIERS, MEMBERS, by_column, one_of, pg_one_of

_PROFILE_COLUMNS = ("first_name", "last_name", "language_code", "address", "fields")
_CHANNEL_KINDS = {k.value for k in IdentifierKind}


@dataclass(frozen=True)
class Found:
    """Who holds what: each external ID's contact, and the unmerged contacts (deleted ones too) behind each
    identity key (``email:<v>``, ``sms:<v>``, ``mobilepush:<v>``, ``webpush:<v>``, ``id:<n>``,
    ``field:<id>:<value>``)."""

    by_external_id: Mapping[str, int]
    by_key: Mapping[str, list[int]]

    def ids(self) -> list[int]:
        return sorted({*self.by_external_id.values(), *(i for ids in self.by_key.values() for i in ids)})


async def find(session: AsyncSession, external_ids: Iterable[str], keys: Iterable[str]) -> Found:
    """The contacts behind these external IDs and keys, in at most four queries (no locks taken)."""
    one = pg_one_of if session.get_bind().dialect.name == "postgresql" else one_of
    by_ext: dict[str, int] = {}
    exts = sorted(set(external_ids))
    if exts:
        rows = await session.execute(select(CONTACTS.c.external_customer_id, CONTACTS.c.id)
                                     .where(one(CONTACTS.c.external_customer_id, "exts")), {"exts": exts})
        by_ext = {e: i for e, i in rows}
    wanted = sorted(set(keys))
    by_key: dict[str, list[int]] = {k: [] for k in wanted}
    channels: dict[str, list[str]] = defaultdict(list)
    ids: list[int] = []
    fields: dict[str, list[str]] = defaultdict(list)
    for key in wanted:
        kind, _, value = key.partition(":")
        if kind in _CHANNEL_KINDS:
            channels[kind].append(value)
        elif kind == "id":
            ids.append(int(value))
        elif kind == "field":
            field_id, _, field_value = value.partition(":")
            fields[field_id].append(field_value)
    live = CONTACTS.c.merged_into_id.is_(None)
    if channels:
        matches = await session.execute(
            select(IDENTIFIERS.c.kind, IDENTIFIERS.c.value, IDENTIFIERS.c.contact_id)
            .join(CONTACTS, CONTACTS.c.id == IDENTIFIERS.c.contact_id)
            .where(or_(*[and_(IDENTIFIERS.c.kind == k, one(IDENTIFIERS.c.value, f"v_{k}")) for k in channels]))
            .where(live).order_by(IDENTIFIERS.c.contact_id), {f"v_{k}": v for k, v in channels.items()})
        for kind, value, cid in matches:
            by_key[f"{kind}:{value}"].append(cid)
    if ids:
        for (cid,) in await session.execute(select(CONTACTS.c.id).where(one(CONTACTS.c.id, "ids"), live),
                                            {"ids": ids}):
            by_key[f"id:{cid}"].append(cid)
    for field_id, values in fields.items():
        for cid, value in await _by_field(session, field_id, values):
            by_key[f"field:{field_id}:{value}"].append(cid)
    return Found(by_ext, by_key)


async def _by_field(session: AsyncSession, field_id: str, values: Sequence[str]) -> list[tuple[int, str]]:
    """Contacts whose custom field ``field_id`` has one of ``values`` (compared as text; a scan of the
    contacts' ``fields`` JSON, which has no index)."""
    if session.get_bind().dialect.name == "postgresql":
        query = text("SELECT c.id, e->>'value' FROM contacts c CROSS JOIN LATERAL jsonb_array_elements("
                     "CASE WHEN jsonb_typeof(c.fields) = 'array' THEN c.fields ELSE '[]'::jsonb END) e "
                     "WHERE c.merged_into_id IS NULL AND e->>'id' = :fid AND e->>'value' IN :values")
    else:
        query = text("SELECT c.id, CAST(json_extract(e.value, '$.value') AS TEXT) FROM contacts c, "
                     "json_each(CASE WHEN json_type(c.fields) = 'array' THEN c.fields ELSE '[]' END) e "
                     "WHERE c.merged_into_id IS NULL AND CAST(json_extract(e.value, '$.id') AS TEXT) = :fid "
                     "AND CAST(json_extract(e.value, '$.value') AS TEXT) IN :values")
    query = query.bindparams(bindparam("values", expanding=True))
    return [(int(cid), str(v)) for cid, v in await session.execute(query, {"fid": field_id, "values": list(values)})]


async def lock_contacts(session: AsyncSession, ids: Sequence[int]) -> dict[int, tuple[Candidate, bool]]:
    """Row-lock these contacts (``FOR UPDATE``, one statement ordered by id: step 2 of the lock order) and
    read them as the rules see them, each with whether it has been merged away meanwhile."""
    if not ids:
        return {}
    return {r.id: (contact_rows.candidate(r), r.merged_into_id is not None)
            for r in await contact_rows.lock_rows(session, sorted(set(ids)))}


async def insert_contacts(db: Database, session: AsyncSession,
                          contacts: Sequence[tuple[str | None, Mapping[str, Any]]], now: int) -> list[int]:
    """Insert contacts given as (external ID, profile attributes); their ids, in the given order."""
    if not contacts:
        return []
    if db.dialect != "postgresql":
        rows = [{**dict.fromkeys(_PROFILE_COLUMNS), **by_column(profile), "external_customer_id": ext,
                 "created_at": now, "updated_at": now} for ext, profile in contacts]
        return await insert_returning_ids(db, session, CONTACTS, rows)
    # ids drawn from the sequence first, so each row's id is known without relying on RETURNING's order
    ids = [r[0] for r in await (await pg_driver.require(session)).fetch_sql(
        "SELECT nextval(pg_get_serial_sequence('contacts', 'id')) FROM generate_series(1, $1)", len(contacts))]
    profiles = [by_column(profile) for _, profile in contacts]
    given = [c for c in _PROFILE_COLUMNS if any(c in p for p in profiles)]  # the others stay NULL
    await insert_rows(db, session, CONTACTS, ("id", "external_customer_id", "created_at", "updated_at", *given), [
        (i, ext, now, now, *[p.get(c) for c in given]) for i, (ext, _), p in zip(ids, contacts, profiles, strict=True)])
    return ids


async def update_contacts(db: Database, session: AsyncSession, changes: Mapping[int, Mapping[str, Any]],
                          now: int) -> None:
    """Set these attributes (profile attributes, ``external_customer_id``, ``deleted_at``) on these contacts,
    and ``updated_at``: one statement per distinct set of attributes."""
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for cid, attrs in changes.items():
        cols = by_column(attrs)
        by_columns[tuple(sorted(cols))].append({"id": cid, **cols})
    for names, rows in by_columns.items():
        if db.dialect == "postgresql":
            columns = ["id", *names]
            sets = ", ".join(["updated_at = $1", *(f"{c} = {pg_value(CONTACTS, c, i + 1)}"
                                                   for i, c in enumerate(names))])
            await (await pg_driver.require(session)).execute_sql(
                f"UPDATE contacts SET {sets} FROM {pg_unnest(CONTACTS, columns, 2)} WHERE contacts.id = u.c0",
                now, *pg_arrays(CONTACTS, columns, rows))
            continue
        statement = (update(CONTACTS).where(CONTACTS.c.id == bindparam("b_id"))
                     .values({"updated_at": bindparam("b_updated_at"), **{c: bindparam(f"b_{c}") for c in names}}))
        await session.execute(statement, [{"b_updated_at": now, **{f"b_{k}": v for k, v in row.items()}}
                                          for row in rows])


async def add_identifiers(db: Database, session: AsyncSession,
                          rows: Iterable[tuple[int, IdentifierKind, str, str | None]], now: int) -> None:
    """Give contacts these channels (contact id, kind, value, device); ones a contact has stay as they are."""
    params = [{"contact_id": cid, "kind": k.value, "value": v, "device": d, "created_at": now} for cid, k, v, d in rows]
    await insert_many(db, session, IDENTIFIERS, params, ignore=("contact_id", "kind", "value"))


async def add_memberships(db: Database, session: AsyncSession, rows: Iterable[tuple[int, int]],
                          form_type: str | None, now: int) -> None:
    """Put contacts in groups, given as (contact id, group id); existing memberships stay as they are, and a
    group deleted meanwhile or dynamic is left out (``groups.joinable``)."""
    rows = list(rows)
    joinable = await groups.joinable(db, session, {g for _, g in rows})
    params = [{"contact_id": c, "group_id": g, "form_type": form_type, "added_at": now} for c, g in rows
              if g in joinable]
    await insert_many(db, session, MEMBERS, params, ignore=("group_id", "contact_id"))

