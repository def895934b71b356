"""One batch of changes: the source rows of one stream turned into the exported rows to upsert and the
keys to remove first, with the watermark the batch takes its stream to.

Streams follow the change sequence of one source table each. A merge moves the loser's timeline rows and
orders to the winner (an update: they come again with the winner's id) and marks the loser merged (its
contact row goes from the target); an erase deletes rows, whose tombstones remove them and everything of
the contact; a soft delete is an update (``deleted_at``); a changed order replaces its items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from stitcher.exports import tables
from stitcher.store.export_source import channels_and_groups

Cursor = tuple[int, int]  # (change_seq, id) of the last row done


@dataclass(frozen=True)
class Watermark:
    """Where a stream's next run starts: after ``cursor``, and at the rows of the ``pending`` transactions
    (still running when a run read, so their rows may carry a stamp below the cursor once committed)."""

    cursor: Cursor = (0, 0)
    pending: tuple[int, ...] = ()

STREAMS = {"contacts": "contacts", "timeline": "events", "orders": "orders", "tombstones": "deletions"}
# what a tombstone of each source table removes: (exported table, column) pairs keyed by the deleted id
_REMOVES = {
    "contacts": (("contacts", "id"), ("events", "contact_id"), ("orders", "contact_id"),
                 ("order_items", "contact_id")),
    "timeline": (("events", "id"),),
    "orders": (("orders", "id"), ("order_items", "order_id")),
}


@dataclass
class Delete:
    table: str
    column: str
    values: list[int]


@dataclass
class Batch:
    """Rows to upsert per exported table, after ``deletes`` (rows whose key column has one of the values)."""

    mark: Watermark
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    deletes: list[Delete] = field(default_factory=list)


async def batch(session: AsyncSession, stream: str, rows: Sequence[dict[str, Any]], mark: Watermark) -> Batch:
    """The batch of ``stream``'s changed source rows ``rows``, which takes the stream to ``mark``."""
    out = Batch(mark)
    if stream == "contacts":
        merged = [r["id"] for r in rows if r["merged_into_id"] is not None]
        live = [r for r in rows if r["merged_into_id"] is None]
        channels, groups = await channels_and_groups(session, [r["id"] for r in live])
        out.rows["contacts"] = [tables.contact(r, channels[r["id"]], groups[r["id"]]) for r in live]
        if merged:
            out.deletes.append(Delete("contacts", "id", merged))
    elif stream == "timeline":
        out.rows["events"] = [tables.event(r) for r in rows]
    elif stream == "orders":
        out.rows["orders"] = [tables.order(r) for r in rows]
        out.rows["order_items"] = [item for r in rows for item in tables.order_items(r)]
        out.deletes.append(Delete("order_items", "order_id", [r["id"] for r in rows]))
    else:
        for source, removes in _REMOVES.items():
            ids = [r["row_id"] for r in rows if r["tbl"] == source]
            if ids:
                out.deletes.extend(Delete(table, column, ids) for table, column in removes)
    return out
