"""Orders as the rules see them: statuses, one validated order, and what posting it changes.

Pure (no I/O): ``stitcher.orders.payload`` builds ``OrderCommand``s from a request, ``plan`` says what a
request does to one order given what is stored, and the service (``stitcher.orders.service``) writes it.
Which contact an order belongs to is decided by ``stitcher.domain.rules.decide_order_owner``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from stitcher.domain.identifiers import Identity

__all__ = ["OrderCommand", "OrderOutcome", "OrderPlan", "OrderStatus", "plan", "timeline_event_id"]


class OrderStatus(StrEnum):
    """The platform's order statuses; each one an order passes through is an ``order<STATUS>`` event."""

    INITIALIZED = "INITIALIZED"
    IN_PROGRESS = "IN_PROGRESS"
    CANCELLED = "CANCELLED"
    DELIVERED = "DELIVERED"
    ABANDONED_SHOPPING_CART = "ABANDONED_SHOPPING_CART"

    @property
    def event_type(self) -> str:
        """The timeline event type, as the platform names it (``orderDELIVERED``)."""
        return f"order{self.value}"


class OrderOutcome(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class OrderCommand:
    """One validated order: its key, the buyer's identity and names, and the order as stored and shown.

    ``data`` holds the platform's field names with normalised values (identifiers normalised, ``date`` in
    UTC ISO 8601, amounts as numbers); two posts of the same order are the same post when their ``data``
    is equal.
    """

    index: int  # position in the request's ``orders``
    external_order_id: str
    identity: Identity
    status: OrderStatus
    ordered_at: int  # the order's ``date``, Unix ms
    data: Mapping[str, Any]
    first_name: str | None = None
    last_name: str | None = None


@dataclass(frozen=True)
class OrderPlan:
    """What one request does to one order: the data to keep (None: nothing to write) and the statuses to put
    on the timeline, in the order they were reached."""

    outcome: OrderOutcome
    final: OrderCommand
    statuses: tuple[OrderStatus, ...]


def plan(stored: Mapping[str, Any] | None, posts: Sequence[OrderCommand]) -> OrderPlan:
    """Fold the posts of one order in a request (in request order) onto what is stored.

    A resend of what is stored changes nothing; any other difference (a status change, a corrected total)
    updates the order. Every status a post carries is offered to the timeline: one the order already
    reached is kept out there by its deterministic event id, so a repeated status adds nothing.
    """
    if not posts:
        raise ValueError("an order plan needs at least one post")
    final = posts[-1]
    statuses = tuple(dict.fromkeys(p.status for p in posts))
    if stored is None:
        return OrderPlan(OrderOutcome.CREATED, final, statuses)
    if dict(stored) == dict(final.data) and all(p.data == stored for p in posts):
        return OrderPlan(OrderOutcome.UNCHANGED, final, statuses)
    return OrderPlan(OrderOutcome.UPDATED, final, statuses)


def timeline_event_id(order_id: int, status: OrderStatus) -> str:
    """The timeline event id of an order reaching a status: one per (order, status), whatever is resent."""
    return f"order-{order_id}-{status.value}"
