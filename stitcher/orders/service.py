"""The orders service: a whole request's orders in one transaction, under the one lock order.

1. every identity key of the request (each order's ``order:``, ``ext:``, ``email:``, ``sms:`` keys) in one
   ``lock_keys`` batch; 2. the contacts the orders land on, ``FOR UPDATE`` by id, re-read; 3. the order rows.
The buyers' candidates are read in two queries, the decisions (``rules.decide_order_owner``) are taken in
memory, and contacts, identifiers, orders and timeline entries are written in multi-row statements.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from stitcher.domain.orders import OrderCommand, OrderOutcome, OrderPlan, OrderStatus, plan, timeline_event_id
from stitcher.domain.rules import Candidate, decide_order_owner
from stitcher.store import audit, bulk, held_events, identity_keys, repo
from stitcher.store import orders as store
from stitcher.store.db import Contention, Database
from stitcher.store.models import Order
from stitcher.store.multirow import insert_returning_ids
from stitcher.store.tables import ORDERS


@dataclass(frozen=True)
class Landed:
    """What happened to one order of the request."""

    index: int
    external_order_id: str
    order_id: int
    contact_id: int
    outcome: OrderOutcome
    contact_created: bool
    found_by: str | None

    def body(self) -> dict[str, Any]:
        return {"index": self.index, "externalOrderId": self.external_order_id, "id": self.order_id,
                "status": self.outcome.value, "contactId": self.contact_id,
                "contactStatus": "created" if self.contact_created else "found", "foundBy": self.found_by}


class _Stale(Exception):
    """A contact or order the request read changed before it was locked (a merge, an erase): run again."""


class OrderService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def post(self, orders: Sequence[OrderCommand], request_id: str | None) -> list[Landed]:
        """Upsert these orders (already validated), creating the contacts the rules ask for, and put each
        status an order reaches on its contact's timeline. Collisions and stale reads are retried; past the
        retries they are ``Contention`` (503), and nothing of the request is written."""
        if not orders:
            return []
        try:
            return await self.db.retry(lambda: self._apply(orders, request_id), also=(_Stale, IntegrityError))
        except (_Stale, IntegrityError) as exc:
            raise Contention(type(exc).__name__) from exc

    async def _apply(self, orders: Sequence[OrderCommand], request_id: str | None) -> list[Landed]:
        posts: dict[str, list[OrderCommand]] = {}
        for order in orders:
            posts.setdefault(order.external_order_id, []).append(order)
        keys = {identity_keys.order(ext) for ext in posts}
        for order in orders:
            keys.update(identity_keys.of_request(order.identity, ()))
        now = repo.now_ms()
        async with self.db.transaction() as s:
            await self.db.lock_keys(s, keys)
            stored = await store.by_external_id(s, posts)
            # an order already stored stays with its contact: only new orders look for their buyer
            buyers = await store.find_buyers(self.db, s, [g[0].identity for e, g in posts.items() if e not in stored])
            seen = buyers.seen()
            owners, found_by, new = _owners(posts, stored, buyers)
            await self._recheck(s, stored, owners, seen, posts)
            ids = await self._create_contacts(s, new, now, request_id)
            owners = {ext: ids[-cid - 1] if cid < 0 else cid for ext, cid in owners.items()}
            plans = {ext: plan(stored[ext].data if ext in stored else None, group) for ext, group in posts.items()}
            order_ids = await self._write_orders(s, stored, owners, plans, now)
            await store.add_timeline(self.db, s, [
                _timeline_row(owners[ext], order_ids[ext], p, status, now)
                for ext, p in plans.items() if p.outcome is not OrderOutcome.UNCHANGED for status in p.statuses])
        creates = {o.external_order_id for o in new}
        return sorted((Landed(o.index, ext, order_ids[ext], owners[ext], plans[ext].outcome,
                              ext in creates, found_by[ext])
                       for ext, group in posts.items() for o in group), key=lambda landed: landed.index)

    async def _recheck(self, s: Any, stored: dict[str, Order], owners: dict[str, int],
                       seen: dict[int, Candidate], posts: dict[str, list[OrderCommand]]) -> None:
        """Lock the contacts the orders land on, then the orders, and check both are as they were read."""
        contacts = await store.lock_contacts(s, (cid for cid in owners.values() if cid > 0))
        for cid in {cid for cid in owners.values() if cid > 0}:
            row, before = contacts.get(cid), seen.get(cid)
            if row is None or row.merged_into_id is not None:
                raise _Stale(cid)  # erased or merged meanwhile
            if before is not None and (row.external_customer_id != before.external_id
                                       or (row.deleted_at is not None) != before.deleted):
                raise _Stale(cid)
        locked = await store.by_external_id(s, posts, for_update=True)
        if {e: o.contact_id for e, o in locked.items()} != {e: o.contact_id for e, o in stored.items()}:
            raise _Stale("orders")

    async def _create_contacts(self, s: Any, new: list[OrderCommand], now: int,
                               request_id: str | None) -> list[int]:
        """The buyers no contact matched: created with the order's names and identifiers, in one statement."""
        ids = await bulk.insert_contacts(self.db, s, [
            (o.identity.external_id, {"first_name": o.first_name, "last_name": o.last_name}) for o in new], now)
        await bulk.add_identifiers(self.db, s, [(cid, kind, value, None) for cid, o in zip(ids, new, strict=True)
                                                for kind, value in o.identity.channels], repo.now_ms())
        audit.record_all(s, [
            (cid, "created", {"externalCustomerId": o.identity.external_id, "source": "order",
                              "externalOrderId": o.external_order_id}) for cid, o in zip(ids, new, strict=True)],
            request_id)
        if ids:
            await held_events.attach(self.db, s, {
                cid: identity_keys.of_request(o.identity, ()) for cid, o in zip(ids, new, strict=True)})
        return ids

    async def _write_orders(self, s: Any, stored: dict[str, Order], owners: dict[str, int],
                            plans: dict[str, OrderPlan], now: int) -> dict[str, int]:
        """Insert the new orders and rewrite the changed ones; the order id of every external order id."""
        created = [ext for ext, p in plans.items() if p.outcome is OrderOutcome.CREATED]
        ids = await insert_returning_ids(self.db, s, ORDERS, [
            {"external_order_id": ext, "contact_id": owners[ext], "status": plans[ext].final.status.value,
             "ordered_at": plans[ext].final.ordered_at, "data": dict(plans[ext].final.data),
             "created_at": now, "updated_at": now} for ext in created])
        await store.update_orders(s, [
            {"id": stored[ext].id, "status": p.final.status.value, "ordered_at": p.final.ordered_at,
             "data": dict(p.final.data), "updated_at": now}
            for ext, p in plans.items() if p.outcome is OrderOutcome.UPDATED])
        out = {ext: int(o.id) for ext, o in stored.items() if o.id is not None}
        out.update(zip(created, ids, strict=True))
        return out


def _owners(posts: dict[str, list[OrderCommand]], stored: dict[str, Order], buyers: store.Buyers
            ) -> tuple[dict[str, int], dict[str, str | None], list[OrderCommand]]:
    """Each order's contact (a stored order keeps its own), what found it, and the orders whose buyer is
    created: those get placeholder ids ``-1, -2, …`` (in the order of the list) until the contacts exist."""
    owners: dict[str, int] = {}
    found_by: dict[str, str | None] = {}
    new: list[OrderCommand] = []
    for ext, group in posts.items():
        if ext in stored:  # an order stays with its contact (merges move it along)
            owners[ext], found_by[ext] = stored[ext].contact_id, "externalOrderId"
            continue
        first = group[0]
        owner = decide_order_owner(first.identity, buyers.lookup(first.identity))
        if owner.contact_id is not None:
            owners[ext], found_by[ext] = owner.contact_id, owner.found_by
            continue
        new.append(first)
        owners[ext], found_by[ext] = -len(new), None
        # later orders of this request find the new buyer like any contact, as the most recently updated
        buyers.add(Candidate(-len(new), first.identity.external_id, False, time.time() + 1e9), first.identity)
    return owners, found_by, new


def _timeline_row(contact_id: int, order_id: int, p: OrderPlan, status: OrderStatus, now: int) -> dict[str, Any]:
    """An ``order<STATUS>`` entry: at the order's date for the status it was created with, else when the
    status arrived."""
    first = p.outcome is OrderOutcome.CREATED and status is p.statuses[0]
    data = p.final.data
    return {"contact_id": contact_id, "event_id": timeline_event_id(order_id, status), "source": "order",
            "type": status.event_type, "occurred_at": p.final.ordered_at if first else now, "received_at": now,
            "visitor_id": None,
            "data": {"orderId": order_id, "externalOrderId": data["externalOrderId"], "status": status.value,
                     "totalCost": data["totalCost"], "currency": data["currency"]}}

