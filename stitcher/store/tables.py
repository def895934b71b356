"""The Core tables the set-based and lean statements write (``bulk``, ``contact_rows``, ``audit``), how a
profile attribute (``ContactCommand.profile``) names its contacts column, and the "one of these values"
condition their statements share: one definition for them all."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Table, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY

from stitcher.store.models import ApiEvent, Contact, GroupMember, Identifier, IdentityLog, Order, VisitorLink

CONTACTS: Table = Contact.__table__  # type: ignore[attr-defined]
IDENTIFIERS: Table = Identifier.__table__  # type: ignore[attr-defined]
LINKS: Table = VisitorLink.__table__  # type: ignore[attr-defined]
MEMBERS: Table = GroupMember.__table__  # type: ignore[attr-defined]
AUDIT: Table = IdentityLog.__table__  # type: ignore[attr-defined]
ORDERS: Table = Order.__table__  # type: ignore[attr-defined]
API_EVENTS: Table = ApiEvent.__table__  # type: ignore[attr-defined]
# profile attributes whose column is named otherwise
_COLUMN = {"custom_fields": "fields"}


def by_column(profile: Mapping[str, Any]) -> dict[str, Any]:
    """Profile attributes keyed by their contacts column."""
    return {_COLUMN.get(attr, attr): value for attr, value in profile.items()}


def pg_one_of(column: Any, name: str) -> Any:
    """``column = ANY(:name)``, the list bound as one array: the SQL text never changes with its length."""
    return column == any_(bindparam(name, type_=ARRAY(column.type)))


def one_of(column: Any, name: str) -> Any:
    """``column IN (…)``, expanded at each execution (SQLite has no arrays)."""
    return column.in_(bindparam(name, expanding=True))
