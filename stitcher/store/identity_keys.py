"""Identity keys: the names the lock order locks (``Database.lock_keys``), spelt in one place.

A request reaches a person through its contactId (``id:``), external ID (``ext:``), channels
(``email:…``, ``sms:…``, ``mobilepush:…``, ``webpush:…``) and visitors (``vid:…``); an order writer also
locks its orders (``order:…``). Every writer locks the keys of what it touches in one batch before any
contact row; one that finds it needs more keys than it locked raises ``NeedKeys`` and runs again with them
in its first batch. How a request's keys are spelt is ``stitcher.domain.keys`` (pure: the import's parser
process spells them without loading the store).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from stitcher.domain.keys import of_request, order, visitor
from stitcher.store.models import Contact, Identifier, VisitorLink

__all__ = ["NeedKeys", "of_contacts", "of_person", "of_request", "order", "require", "visitor"]


class NeedKeys(Exception):
    """The transaction found identity keys it had not locked (a merge loser's visitors, an erased person's
    identifiers): it runs again with them in its first batch, keeping the one lock order (``lock_keys``)."""

    def __init__(self, keys: set[str]) -> None:
        super().__init__(f"{len(keys)} more identity keys to lock")
        self.keys = keys


def require(locked: set[str], keys: set[str]) -> None:
    """Raise ``NeedKeys`` when ``keys`` are not all among the keys this transaction locked."""
    if not keys <= locked:
        raise NeedKeys(keys - locked)


async def of_contacts(s: AsyncSession, ids: Sequence[int]) -> set[str]:
    """Every identity key through which a request can reach these contacts: ids, external IDs, channels
    and visitors (spelt as ``of_request`` spells them)."""
    keys = {f"id:{i}" for i in ids}
    keys |= {f"ext:{e}" for e in (await s.execute(select(col(Contact.external_customer_id)).where(
        col(Contact.id).in_(ids), col(Contact.external_customer_id).is_not(None)))).scalars()}
    keys |= {f"{kind}:{value}" for kind, value in await s.execute(
        select(col(Identifier.kind), col(Identifier.value)).where(col(Identifier.contact_id).in_(ids)))}
    keys |= {visitor(v) for v in (await s.execute(select(col(VisitorLink.visitor_id)).where(
        col(VisitorLink.contact_id).in_(ids)))).scalars()}
    return keys


async def of_person(s: AsyncSession, contact_id: int) -> tuple[list[int], set[str]]:
    """A contact and every contact merged into it (the same person), with all their identity keys."""
    ids: list[int] = [contact_id]
    frontier = [contact_id]
    while frontier:
        merged = [i for i in (await s.execute(select(col(Contact.id)).where(
            col(Contact.merged_into_id).in_(frontier)))).scalars() if i is not None]
        ids += merged
        frontier = merged
    return ids, await of_contacts(s, ids)
