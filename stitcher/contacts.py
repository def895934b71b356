"""The contacts service: load candidates, let the identity rules decide, apply it in one transaction, stitch.

Handlers stay thin; this is where a decision of ``stitcher.domain.rules`` becomes rows and Redis links.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import delete, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlmodel import col

from stitcher.domain.errors import ContactNotFound, DomainError
from stitcher.domain.identifiers import Identity
from stitcher.domain.rules import Action, Candidate, Decision, Lookup, Mode, decide, lookup_kinds
from stitcher.payload import ContactRequest
from stitcher.stitch import Stitcher
from stitcher.store import repo
from stitcher.store.db import Database
from stitcher.store.models import Contact, IdentityLog, VisitorLink
from tracker.eventlog import EventLog

log = structlog.get_logger("contacts")
ATTEMPTS = 5  # a unique-key race (two creators of one external ID) is retried, then finds the winner


@dataclass
class Outcome:
    """What an add/update/subscribe did, as the API reports it."""

    id: int
    status: str  # created | updated | restored | merged
    external_id: str | None
    merged: list[int] = field(default_factory=list)
    visitors: list[str] = field(default_factory=list)
    stitched: int = 0

    def body(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "externalCustomerId": self.external_id,
                "mergedContactIds": self.merged, "linkedVisitorIds": self.visitors,
                "stitchedEvents": self.stitched}


class _StaleDecision(Exception):
    """A contact the decision rests on changed after it was read (a concurrent request): decide again."""


class ConflictRetry(DomainError):
    status = 409
    code = "concurrent_update"

    def __init__(self) -> None:
        super().__init__("the contacts this request names keep changing under concurrent requests; retry")


async def _recheck(s: Any, decision: Decision, found: Lookup) -> None:
    """Lock the contacts the decision updates or merges and check they are as the rules saw them.

    The request's own identifier locks do not cover a contact found through them that another request
    reaches by a different identifier; the row lock does, and re-reading under it (populate_existing, so the
    session's earlier copy is replaced) catches an external ID given or a merge done meanwhile.
    """
    ids = ([decision.target] if decision.target is not None else []) + list(decision.merge)
    if not ids:
        return
    seen = {c.id: c for c in _candidates(found)}
    rows = (await s.execute(select(Contact).where(col(Contact.id).in_(ids)).order_by(col(Contact.id))
                            .with_for_update().execution_options(populate_existing=True))).scalars()
    rows = list(rows)
    if len(rows) != len(set(ids)):
        raise _StaleDecision(ids)  # erased meanwhile
    for row in rows:
        before = seen.get(row.id)
        if before is None:
            continue
        if (row.merged_into_id is not None or row.external_customer_id != before.external_id
                or (row.deleted_at is not None) != before.deleted):
            raise _StaleDecision(row.id)


def _candidates(found: Lookup) -> list[Candidate]:
    out = [c for c in (found.by_contact_id, found.by_external_id) if c is not None]
    for group in found.by_channel.values():
        out.extend(group)
    return out


def _retryable(exc: DBAPIError) -> bool:
    if isinstance(exc, IntegrityError):
        return True
    text = str(exc.orig).lower()
    return "deadlock" in text or "could not serialize" in text


def _lock_keys(identity: Identity, visitors: Sequence[str]) -> list[str]:
    keys = [f"{k.value}:{v}" for k, v in identity.channels] + [f"vid:{v}" for v in visitors]
    if identity.external_id is not None:
        keys.append(f"ext:{identity.external_id}")
    if identity.contact_id is not None:
        keys.append(f"id:{identity.contact_id}")
    return keys


class ContactService:
    def __init__(self, db: Database, eventlog: EventLog, stitcher: Stitcher) -> None:
        self.db = db
        self.eventlog = eventlog
        self.stitcher = stitcher

    async def upsert(self, mode: Mode, request: ContactRequest, *, groups: Sequence[str] = (),
                     form_type: str | None = None, request_id: str | None = None) -> Outcome:
        """Add/update (or subscribe) one contact and stitch the given visitors' history onto it.

        When this returns, the anonymous history of ``request.visitor_ids`` is on the timeline.
        """
        for attempt in range(1, ATTEMPTS + 1):
            try:
                outcome, to_stitch = await self._apply(mode, request, groups, form_type, request_id)
                break
            except _StaleDecision as exc:
                if attempt == ATTEMPTS:
                    raise ConflictRetry() from exc
                log.info("decision went stale, retrying", attempt=attempt)
            except (IntegrityError, OperationalError, DBAPIError) as exc:
                # a unique-key race (two creators of one external ID) or a deadlock between a merge and
                # another request about the same visitors: the retry sees the winner's committed state
                if attempt == ATTEMPTS or not _retryable(exc):
                    raise
                log.info("identity race, retrying", attempt=attempt, error=type(exc.orig).__name__)
        for vid, contact_id in to_stitch:
            stitched = await self.stitcher.stitch(vid, contact_id)
            if contact_id == outcome.id:
                outcome.stitched += stitched
        return outcome

    async def _apply(self, mode: Mode, request: ContactRequest, groups: Sequence[str],
                     form_type: str | None, request_id: str | None) -> tuple[Outcome, list[tuple[str, int]]]:
        """One transaction: decide, write the contact, merge, link visitors. Returns the stitches to run."""
        identity = request.identity
        async with self.db.transaction() as s:
            await self.db.lock_keys(s, _lock_keys(identity, request.visitor_ids))
            found = await repo.lookup(s, identity, lookup_kinds(mode))
            decision = decide(mode, identity, found)
            await _recheck(s, decision, found)
            contact = await self._target(s, decision, request, request_id)
            assert contact.id is not None
            cid = contact.id
            await repo.add_identifiers(self.db, s, cid, request.channels())
            to_stitch: list[tuple[str, int]] = []
            for loser in decision.merge:
                # a stitch onto the loser in flight must finish before its timeline moves
                await self.db.lock_keys(s, [f"vid:{v}" for v in await repo.visitors_of(s, loser)])
                to_stitch += [(v, cid) for v in await repo.merge_into(self.db, s, loser, cid)]
                repo.audit(s, cid, "merged", request_id, mergedContactId=loser)
                repo.audit(s, loser, "merged_into", request_id, intoContactId=cid)
            to_stitch += await self._link_visitors(s, cid, request.visitor_ids, request_id)
            if groups:
                await repo.add_to_groups(self.db, s, cid, await repo.ensure_groups(self.db, s, groups),
                                         form_type)
            status = "merged" if decision.merged else decision.action.value
            outcome = Outcome(cid, status, contact.external_customer_id, list(decision.merge),
                              list(request.visitor_ids))
        return outcome, list(dict.fromkeys(to_stitch))

    async def _target(self, s: Any, decision: Decision, request: ContactRequest,
                      request_id: str | None) -> Contact:
        now = repo.now_ms()
        if decision.action is Action.CREATE:
            contact = Contact(external_customer_id=decision.set_external_id, created_at=now, updated_at=now,
                              **request.profile)
            s.add(contact)
            await s.flush()
            assert contact.id is not None
            repo.audit(s, contact.id, "created", request_id, externalCustomerId=decision.set_external_id)
            return contact
        assert decision.target is not None
        contact = await s.get_one(Contact, decision.target)
        for attr, value in request.profile.items():
            setattr(contact, attr, value)
        if decision.action is Action.RESTORE:
            contact.deleted_at = None
            repo.audit(s, decision.target, "restored", request_id)
        if decision.set_external_id is not None:
            repo.audit(s, decision.target, "assigned_external_id", request_id,
                       externalCustomerId=decision.set_external_id, previous=contact.external_customer_id,
                       foundBy=decision.found_by)
            contact.external_customer_id = decision.set_external_id
        contact.updated_at = now
        await s.flush()
        return contact  # type: ignore[no-any-return]  # scalar_one() of a typed select

    async def _link_visitors(self, s: Any, cid: int, visitor_ids: Sequence[str],
                             request_id: str | None) -> list[tuple[str, int]]:
        """Open links from these visitors to ``cid``; a visitor linked to someone else changes hands now.

        Returns the (visitor, contact) stitches to run after the commit: every visitor onto ``cid`` (its
        history since the last stitch, if any), and the earlier owner's unfinished stitch, if one was
        running, so that what happened before stays with the earlier person.
        """
        now = repo.now_ms()
        current = {link.visitor_id: link for link in await repo.open_links(s, visitor_ids)}
        stitches: list[tuple[str, int]] = []
        for vid in visitor_ids:
            link = current.get(vid)
            if link is not None and link.contact_id != cid:  # a shared browser changes hands now
                if link.stitched_at is None:
                    # its stitch has not run yet: hand the history over to the earlier owner first
                    await self.eventlog.claim(vid, link.contact_id)
                    stitches.append((vid, link.contact_id))
                link.unlinked_at = now
                repo.audit(s, link.contact_id, "unlinked_visitor", request_id, visitorId=vid, toContactId=cid)
                await s.flush()
            if link is None or link.contact_id != cid:
                s.add(VisitorLink(visitor_id=vid, contact_id=cid, linked_at=now))
                repo.audit(s, cid, "linked_visitor", request_id, visitorId=vid)
            stitches.append((vid, cid))
        await s.flush()
        return stitches

    async def delete(self, contact_id: int, *, erase: bool, request_id: str | None) -> None:
        """Soft delete (restorable by its external ID) or erase for good, Redis history included."""
        async with self.db.transaction() as s:
            contact = await s.get(Contact, contact_id)
            if contact is None or contact.merged_into_id is not None:
                raise ContactNotFound(contact_id)
            if not erase:
                if contact.deleted_at is None:
                    contact.deleted_at = repo.now_ms()
                    repo.audit(s, contact_id, "deleted", request_id)
                return
            ids: list[int] = [contact_id]
            frontier = [contact_id]
            while frontier:  # contacts merged into this one are the same person
                merged = [i for i in (await s.execute(select(col(Contact.id)).where(
                    col(Contact.merged_into_id).in_(frontier)))).scalars() if i is not None]
                ids += merged
                frontier = merged
            links = list((await s.execute(select(VisitorLink).where(
                col(VisitorLink.contact_id).in_(ids)))).scalars())
            # a stitch of these visitors in flight finishes first; none can claim for the erased after this
            await self.db.lock_keys(s, [f"vid:{link.visitor_id}" for link in links])
            # a visitor whose browser has passed to someone else stays theirs: only its claims go
            owned = {link.visitor_id for link in links if link.unlinked_at is None}
            others = {link.visitor_id for link in links} - owned
            await s.execute(delete(IdentityLog).where(col(IdentityLog.contact_id).in_(ids)))
            for cid in reversed(ids):
                await s.execute(delete(Contact).where(col(Contact.id) == cid))
            repo.audit(s, contact_id, "erased", request_id, contacts=len(ids), visitors=len(owned))
            # Redis first, still inside the transaction: if Redis is down the erase rolls back (503) and a
            # retry finds the contact again, rather than leaving the person's history behind in Redis
            for vid in owned:
                await self.eventlog.forget(vid, ids)
            for vid in others:
                await self.eventlog.drop_claims(vid, ids)

    async def id_by_external_id(self, external_id: str) -> int:
        async with self.db.reader() as s:
            cid = (await s.execute(select(col(Contact.id)).where(
                col(Contact.external_customer_id) == external_id))).scalar_one_or_none()
        if cid is None:
            raise ContactNotFound(None, externalCustomerId=external_id)
        return int(cid)
