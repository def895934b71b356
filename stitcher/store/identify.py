"""The signed identify's one query of its own (``stitcher.identify``); the link itself is the contact API's."""

from __future__ import annotations

from sqlalchemy import select
from sqlmodel import col

from stitcher.store.db import Database
from stitcher.store.models import Contact, VisitorLink


async def already_linked(db: Database, vid: str, external_id: str) -> bool:
    """Whether ``vid`` is linked, stitch finished, to the live contact holding ``external_id``: then an
    identify would change nothing, and it is answered without a write (a site may identify on every page)."""
    query = (select(col(VisitorLink.id))
             .join(Contact, col(Contact.id) == col(VisitorLink.contact_id))
             .where(col(VisitorLink.visitor_id) == vid, col(VisitorLink.unlinked_at).is_(None),
                    col(VisitorLink.stitched_at).is_not(None), col(Contact.external_customer_id) == external_id,
                    col(Contact.deleted_at).is_(None), col(Contact.merged_into_id).is_(None))
             .limit(1))
    async with db.reader() as session:
        return (await session.execute(query)).first() is not None
