"""The contacts service: load candidates, let the identity rules decide, apply it in one transaction, stitch.

Handlers stay thin; this is where a decision of ``stitcher.domain.rules`` becomes rows and Redis links.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from stitcher.domain.commands import ContactCommand
from stitcher.domain.errors import ConcurrentUpdate, ContactNotFound
from stitcher.domain.rules import Action, Candidate, Decision, Lookup, Mode, decide, lookup_kinds
from stitcher.stitch import Stitcher
from stitcher.store import contact_rows, held_events, identity_keys, repo
from stitcher.store.db import Contention, Database
from stitcher.store.identity_keys import NeedKeys
from stitcher.store.models import Contact, IdentityLog, VisitorLink
from tracker.eventlog import EventLog

log = structlog.get_logger("contacts")


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


async def _recheck(s: Any, decision: Decision, found: Lookup) -> None:
    """Lock the contacts the decision updates and merges and check they are as the rules saw them.

    The request's own identifier locks do not cover a contact found through them that another request
    reaches by a different identifier; the row lock does, and reading under it catches an external ID given
    or a merge done meanwhile.
    """
    ids = ([decision.target] if decision.target is not None else []) + list(decision.merge)
    if ids:
        _check(ids, await contact_rows.lock(s, ids), found)


def _check(ids: Sequence[int], rows: dict[int, contact_rows.Locked], found: Lookup) -> None:
    """Raise ``_StaleDecision`` unless the contacts ``ids``, as locked (``rows``), are as the lookup saw them."""
    seen = {c.id: c for c in _candidates(found)}
    if len(rows) != len(set(ids)):
        raise _StaleDecision(ids)  # erased meanwhile
    for row in rows.values():
        before = seen.get(row.id)
        if before is None:
            continue
        if row.merged or row.external_id != before.external_id or row.deleted != before.deleted:
            raise _StaleDecision(row.id)


def _candidates(found: Lookup) -> list[Candidate]:
    out = [c for c in (found.by_contact_id, found.by_external_id) if c is not None]
    for group in found.by_channel.values():
        out.extend(group)
    return out


class ContactService:
    def __init__(self, db: Database, eventlog: EventLog, stitcher: Stitcher) -> None:
        self.db = db
        self.eventlog = eventlog
        self.stitcher = stitcher

    async def upsert(self, mode: Mode, command: ContactCommand, *, groups: Sequence[str] = (),
                     group_ids: Sequence[int] = (), form_type: str | None = None,
                     request_id: str | None = None) -> Outcome:
        """Add/update (or subscribe) one contact and stitch the given visitors' history onto it.

        The contact joins ``command.groups`` and ``groups`` (subscribe's top-level list), created when missing,
        and the groups ``command.group_ids`` and ``group_ids`` name by id (checked by ``group_refs``) if they
        still exist.

        When this returns, the anonymous history of ``command.visitor_ids`` is on the timeline. A decision
        gone stale (409 after the retries), a unique-key race (two creators of one external ID: the retry
        finds the winner), keys learnt late and collisions are retried; past the retries the last two are
        ``Contention`` (503).
        """
        extra: set[str] = set()

        async def attempt() -> tuple[Outcome, list[tuple[str, int]]]:
            try:
                return await self._apply(mode, command, groups, group_ids, form_type, request_id, extra)
            except NeedKeys as exc:
                extra.update(exc.keys)
                raise

        try:
            outcome, to_stitch = await self.db.retry(attempt, also=(_StaleDecision, NeedKeys, IntegrityError))
        except _StaleDecision as exc:
            raise ConcurrentUpdate() from exc
        except (NeedKeys, IntegrityError) as exc:
            raise Contention(type(exc).__name__) from exc
        for vid, contact_id in to_stitch:
            stitched = await self.stitcher.stitch(vid, contact_id)
            if contact_id == outcome.id:
                outcome.stitched += stitched
        return outcome

    async def _apply(self, mode: Mode, command: ContactCommand, groups: Sequence[str], group_ids: Sequence[int],
                     form_type: str | None, request_id: str | None,
                     extra: set[str]) -> tuple[Outcome, list[tuple[str, int]]]:
        """One transaction: decide, write the contact, merge, link visitors. Returns the stitches to run.

        ``extra`` are keys an earlier attempt found it needed (a merge loser's visitors): locked with the
        request's own keys, in one batch.
        """
        identity = command.identity
        async with self.db.transaction() as s:
            locked = {*identity_keys.of_request(identity, command.visitor_ids), *extra}
            await self.db.lock_keys(s, locked)
            held_keys = held_events.held_keys(identity_keys.of_request(identity, ()))
            found, held = await contact_rows.lookup_held(s, identity, lookup_kinds(mode), held_keys)
            decision = decide(mode, identity, found)
            # a stitch onto a loser in flight must finish before its timeline moves: its visitors' keys
            losers_visitors = [v for loser in decision.merge for v in await repo.visitors_of(s, loser)]
            identity_keys.require(locked, {identity_keys.visitor(v) for v in losers_visitors})
            if decision.merge:  # the target and the losers, in one statement (lock order step 2)
                await _recheck(s, decision, found)
            cid, external_id = await self._target(s, decision, found, command, request_id)
            if held:  # events held for this person's identifiers (all locked above) join its timeline now
                await held_events.attach(self.db, s, {cid: held_keys})
            to_stitch: list[tuple[str, int]] = []
            for loser in decision.merge:
                # under the row lock now: a visitor linked to the loser meanwhile needs its key too
                identity_keys.require(locked, {identity_keys.visitor(v) for v in await repo.visitors_of(s, loser)})
                moved = await repo.merge_into(self.db, s, loser, cid)
                to_stitch += [(v, cid) for v in moved.visitors]
                repo.audit(s, cid, "merged", request_id, mergedContactId=loser, **moved.detail())
                repo.audit(s, loser, "merged_into", request_id, intoContactId=cid, **moved.detail())
                for vid in moved.visitors:
                    repo.audit(s, loser, "unlinked_visitor", request_id, visitorId=vid, toContactId=cid,
                               reason="merge")
                    repo.audit(s, cid, "linked_visitor", request_id, visitorId=vid, fromContactId=loser,
                               reason="merge")
            to_stitch += await self._link_visitors(s, cid, command.visitor_ids, request_id)
            # the contact's own groups (add/update, PUT, subscribe) and subscribe's top-level ones
            names = tuple(dict.fromkeys((*command.groups, *groups)))
            ids = [*(g for g, _ in command.group_ids), *group_ids]  # never created: joined while they exist
            if names or ids:
                await repo.add_to_groups(self.db, s, cid, [*await repo.ensure_groups(self.db, s, names), *ids],
                                         form_type)
            status = "merged" if decision.merged else decision.action.value
            outcome = Outcome(cid, status, external_id, list(decision.merge), list(command.visitor_ids))
        return outcome, list(dict.fromkeys(to_stitch))

    async def _target(self, s: Any, decision: Decision, found: Lookup, command: ContactCommand,
                      request_id: str | None) -> tuple[int, str | None]:
        """Create or update the decision's contact and give it the request's channels; returns its id and
        external ID. An update locks the contact and checks it is as the rules saw it (``_check``)."""
        now = repo.now_ms()
        if decision.action is Action.CREATE:
            cid = await contact_rows.create(self.db, s, decision.set_external_id, command.profile,
                                            command.channels(), now, request_id)
            return cid, decision.set_external_id
        assert decision.target is not None
        cid = decision.target
        changes: dict[str, Any] = dict(command.profile)
        if decision.action is Action.RESTORE:
            changes["deleted_at"] = None
        if decision.set_external_id is not None:
            changes["external_customer_id"] = decision.set_external_id
        # the channels the lookup found on the target stay as they are (their keys are locked): no insert
        held = {pair for pair, holders in found.by_channel.items() if any(c.id == cid for c in holders)}
        locked = await contact_rows.update_locked(self.db, s, cid, changes,
                                                  [c for c in command.channels() if c[:2] not in held], now)
        _check([cid], {cid: locked} if locked is not None else {}, found)  # else the update rolls back
        assert locked is not None
        external_id = locked.external_id
        if decision.action is Action.RESTORE:
            repo.audit(s, cid, "restored", request_id)
        if decision.set_external_id is not None:
            repo.audit(s, cid, "assigned_external_id", request_id, externalCustomerId=decision.set_external_id,
                       previous=external_id, foundBy=decision.found_by)
            external_id = decision.set_external_id
        return cid, external_id

    async def _link_visitors(self, s: Any, cid: int, visitor_ids: Sequence[str],
                             request_id: str | None) -> list[tuple[str, int]]:
        """Open links from these visitors to ``cid``; a visitor linked to someone else changes hands now.

        Returns the (visitor, contact) stitches to run after the commit: every visitor onto ``cid`` (its
        history since the last stitch, if any), and the earlier owner's unfinished stitch, if one was
        running, so that what happened before stays with the earlier person.
        """
        now = repo.now_ms()
        current = await contact_rows.open_links(s, visitor_ids)
        stitches: list[tuple[str, int]] = []
        new: list[str] = []
        for vid in visitor_ids:
            link = current.get(vid)
            if link is not None and link.contact_id != cid:  # a shared browser changes hands now
                if not link.stitched:
                    # its stitch has not run yet: hand the history over to the earlier owner first
                    await self.eventlog.claim(vid, link.contact_id)
                    stitches.append((vid, link.contact_id))
                await contact_rows.unlink(s, link.id, now)
                repo.audit(s, link.contact_id, "unlinked_visitor", request_id, visitorId=vid, toContactId=cid)
            if link is None or link.contact_id != cid:
                new.append(vid)
                repo.audit(s, cid, "linked_visitor", request_id, visitorId=vid)
            stitches.append((vid, cid))
        await contact_rows.link(s, cid, new, now)
        return stitches

    async def delete(self, contact_id: int, *, erase: bool, request_id: str | None) -> None:
        """Soft delete (restorable by its external ID) or erase for good, Redis history included.

        Both take the person's identity keys, then the contact rows, as every identity write does, and
        re-read under them: a merge into the contact either finished before (its loser goes too) or starts
        after and finds the contact gone.
        """
        extra: set[str] = set()

        async def attempt() -> None:
            try:
                await self._delete_once(contact_id, erase, request_id, extra)
            except NeedKeys as exc:
                extra.update(exc.keys)
                raise

        try:
            await self.db.retry(attempt, also=(NeedKeys,))
        except NeedKeys as exc:
            raise Contention("the person kept changing during the erase") from exc

    async def _delete_once(self, contact_id: int, erase: bool, request_id: str | None, extra: set[str]) -> None:
        async with self.db.transaction() as s:
            if erase:
                ids, keys = await identity_keys.of_person(s, contact_id)
            else:
                ids, keys = [contact_id], await identity_keys.of_contacts(s, [contact_id])
            locked = keys | extra
            await self.db.lock_keys(s, locked)
            rows = {c.id: c for c in (await s.execute(
                select(Contact).where(col(Contact.id).in_(ids)).order_by(col(Contact.id))
                .with_for_update().execution_options(populate_existing=True))).scalars()}
            contact = rows.get(contact_id)
            if contact is None or contact.merged_into_id is not None:
                raise ContactNotFound(contact_id)
            if not erase:
                identity_keys.require(locked, await identity_keys.of_contacts(s, [contact_id]))
                if contact.deleted_at is None:
                    contact.deleted_at = repo.now_ms()
                    repo.audit(s, contact_id, "deleted", request_id)
                return
            # under the locks: the person as it is now; anything new (a contact merged in, a visitor linked)
            # means running again with its keys and rows locked first
            now_ids, now_keys = await identity_keys.of_person(s, contact_id)
            identity_keys.require(locked, now_keys)
            if set(now_ids) - set(rows):
                raise NeedKeys(now_keys)
            links = list((await s.execute(select(VisitorLink).where(
                col(VisitorLink.contact_id).in_(ids)))).scalars())
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
            await self.eventlog.forget_rejected(owned)

    async def id_by_external_id(self, external_id: str) -> int:
        async with self.db.reader() as s:
            cid = (await s.execute(select(col(Contact.id)).where(
                col(Contact.external_customer_id) == external_id))).scalar_one_or_none()
        if cid is None:
            raise ContactNotFound(None, externalCustomerId=external_id)
        return int(cid)
