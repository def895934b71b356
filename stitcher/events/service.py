"""The events service: an API event onto its contact's timeline, or held until that contact appears.

One transaction per event, in THE LOCK ORDER (``Database.lock_keys``): the identity keys of every identifier
the event names, then the contact row it lands on (``FOR SHARE``: a merge of that contact waits, or has
committed and the event follows it to the winner), then the event's own rows. A contact writer giving
someone one of those identifiers takes the same key lock and calls ``held_events.attach``, so an event
arriving while its contact is being created is either held and attached by that writer, or finds the
contact — never lost, never twice. The event's id is its idempotency key: a resend finds its receipt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from stitcher.domain.rules import LOOKUP_ORDER, Lookup, route_event
from stitcher.events.payload import EventCommand
from stitcher.stitch import insert_timeline
from stitcher.store import contact_rows, held_events, identity_keys, repo
from stitcher.store.db import Contention, Database
from stitcher.store.models import ApiEvent


@dataclass(frozen=True)
class EventOutcome:
    event_id: str
    status: str  # stored | held
    contact_id: int | None
    duplicate: bool = False

    def body(self) -> dict[str, Any]:
        return {"id": self.event_id, "status": self.status, "contactId": self.contact_id,
                "duplicate": self.duplicate}


class _ContactGone(Exception):
    """The contact the event was routed to was erased before its row could be locked: route again."""


class EventService:
    def __init__(self, db: Database, hold_ms: int) -> None:
        self.db = db
        self.hold_ms = hold_ms

    async def post(self, command: EventCommand) -> EventOutcome:
        """Store or hold one event; a resend (same event id) changes nothing and answers what became of it.

        Two copies racing with different identifiers meet on the event id's unique index: the loser's
        transaction rolls back and its retry finds the receipt.
        """
        try:
            outcome = await self.db.retry(lambda: self._post_once(command), also=(IntegrityError, _ContactGone))
        except (IntegrityError, _ContactGone) as exc:
            raise Contention(type(exc).__name__) from exc
        return outcome

    async def _post_once(self, command: EventCommand) -> EventOutcome:
        identity = command.identity
        async with self.db.transaction() as s:
            await self.db.lock_keys(s, identity_keys.of_request(identity, ()))
            seen = await held_events.receipt(s, command.event_id) if command.keyed else None
            if seen is not None:
                return await _resent(s, command.event_id, *seen)
            found = await contact_rows.lookup(s, identity, LOOKUP_ORDER)
            if identity.contact_id is not None and found.by_contact_id is None:
                found = await _follow_merge(s, identity.contact_id, found)
            route = route_event(identity, found)
            now = repo.now_ms()
            event = ApiEvent(event_id=command.event_id, type=command.type, data=command.data,
                             occurred_at=command.occurred_ms if command.occurred_ms is not None else now,
                             received_at=now, expires_at=now + self.hold_ms)
            if route.contact_id is None:
                assert route.hold is not None
                [event.held_key] = identity_keys.of_request(route.hold, ())
                outcome = EventOutcome(command.event_id, "held", None)
            else:
                event.contact_id = await held_events.lock_live_contact(s, route.contact_id)
                if event.contact_id is None:
                    raise _ContactGone(route.contact_id)
                await insert_timeline(self.db, s, [held_events.timeline_row(event.contact_id, event)])
                event.data = None
                outcome = EventOutcome(command.event_id, "stored", event.contact_id)
            # the row of a held event; for a stored one, the receipt a resend finds — only worth writing when a
            # resend can come (an event without a key has a fresh random id). A racing copy with other
            # identifiers (other locks) fails here on the unique event id, and its retry finds this row.
            if event.held_key is not None or command.keyed:
                await held_events.record(s, event)
            return outcome


async def _follow_merge(s: AsyncSession, contact_id: int, found: Lookup) -> Lookup:
    """A contactId of a contact merged into another names the survivor: a backend that stored the old id
    keeps reaching the person (the merge moved its timeline there too)."""
    winner = await repo.resolve_merged(s, contact_id)
    if winner is None or winner.id == contact_id:
        return found
    return replace(found, by_contact_id=contact_rows.candidate(winner))


async def _resent(s: AsyncSession, event_id: str, held_key: str | None, contact_id: int | None) -> EventOutcome:
    """What became of an event sent before: still held, or on a timeline (followed through merges)."""
    if held_key is not None:
        return EventOutcome(event_id, "held", None, duplicate=True)
    contact = await repo.resolve_merged(s, contact_id) if contact_id is not None else None
    return EventOutcome(event_id, "stored", contact.id if contact is not None else None, duplicate=True)
