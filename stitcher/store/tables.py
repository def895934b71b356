"""The Core tables the set-based and lean statements write (``bulk``, ``contact_rows``, ``audit``), and how a
profile attribute (``ContactCommand.profile``) names its contacts column: one definition for them all."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Table

from stitcher.store.models import Contact, GroupMember, Identifier, IdentityLog, VisitorLink

CONTACTS: Table = Contact.__table__  # type: ignore[attr-defined]
IDENTIFIERS: Table = Identifier.__table__  # type: ignore[attr-defined]
LINKS: Table = VisitorLink.__table__  # type: ignore[attr-defined]
MEMBERS: Table = GroupMember.__table__  # type: ignore[attr-defined]
AUDIT: Table = IdentityLog.__table__  # type: ignore[attr-defined]
# profile attributes whose column is named otherwise
_COLUMN = {"custom_fields": "fields"}


def by_column(profile: Mapping[str, Any]) -> dict[str, Any]:
    """Profile attributes keyed by their contacts column."""
    return {_COLUMN.get(attr, attr): value for attr, value in profile.items()}
