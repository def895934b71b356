"""Held API events: events posted for a person not yet known, waiting under an identity key.

SEAM ONLY (issue 9 in progress): the events work replaces this module with the real table and queries.
Every writer that creates a contact or gives one a new identifier (add/update, PUT, subscribe, import,
orders) calls ``attach`` inside its transaction, after the identifiers are written and while it still holds
the identity keys it locked, so a held event joins the timeline exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy.ext.asyncio import AsyncSession

from stitcher.store.db import Database


async def attach(db: Database, session: AsyncSession, keys_by_contact: Mapping[int, Iterable[str]]) -> int:
    """Move the events held under these identity keys onto each contact's timeline; returns how many.

    ``keys_by_contact`` maps a contact id to identity keys spelt as ``identity_keys`` spells them
    (``ext:<id>``, ``email:<v>``, ``sms:<v>``, ``mobilepush:<v>``, ``webpush:<v>``), which the caller has
    locked (``Database.lock_keys``).
    """
    return 0
