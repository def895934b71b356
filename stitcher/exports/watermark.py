"""The export's run: for each stream, the source rows changed since the watermark the target keeps, up to
what the source's snapshot knows is final, written batch by batch; each batch's write commits its rows and
the stream's new watermark together, so a run that fails leaves the target consistent with its watermarks
and the next run goes on from there, and a run after a complete one copies only what changed since.

While a run is under way its batches' watermark keeps the transactions that were running when it read as
pending (with those pending before): if it fails, the next run still takes their rows.
"""

from __future__ import annotations

from typing import Protocol

from stitcher.exports.changes import STREAMS, Batch, Watermark, batch
from stitcher.exports.progress import Progress
from stitcher.store import export_source
from stitcher.store.db import Database


class Target(Protocol):
    async def watermarks(self) -> dict[str, Watermark]:
        """Each stream's watermark as the last committed batch left it (absent: from the start)."""

    async def write(self, stream: str, batch: Batch) -> None:
        """Apply the batch and set the stream's watermark to ``batch.mark``, all or nothing."""


class ExportFailed(Exception):
    """A batch could not be read or written; the target keeps what the batches before it committed."""

    def __init__(self, table: str, batch: int, cause: BaseException) -> None:
        super().__init__(f"table {table}, batch {batch} failed: {type(cause).__name__}: {cause}")
        self.table, self.batch = table, batch


async def export(db: Database, target: Target, progress: Progress, batch_rows: int) -> dict[str, int]:
    """Bring the target up to date with the source; the source rows done per exported table."""
    done: dict[str, int] = {}
    marks = await target.watermarks()
    async with export_source.snapshot(db) as (session, horizon):
        for stream, table in STREAMS.items():
            mark = marks.get(stream, Watermark())
            window = export_source.Window(mark.cursor, mark.pending, horizon)
            carried = tuple(sorted({*mark.pending, *horizon.running}))
            progress.start(table, await export_source.count(session, stream, window))
            done[table], number, key = 0, 0, (-1, -1)
            while True:
                number += 1
                try:
                    rows = await export_source.changed(session, stream, window, key, batch_rows)
                    if rows:
                        key = rows[-1]["cursor"]
                        step = await batch(session, stream, rows, Watermark(max(mark.cursor, key), carried))
                    else:  # the last write takes the watermark to the window's end
                        step = Batch(Watermark((horizon.below, 0), horizon.running))
                    if rows or step.mark != mark:
                        await target.write(stream, step)
                        mark = step.mark
                except Exception as exc:
                    progress.stop()
                    raise ExportFailed(table, number, exc) from exc
                if not rows:
                    break
                done[table] += len(rows)
                progress.advance(table, len(rows))
            progress.finish(table)
    progress.stop()
    return done
