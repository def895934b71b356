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
    async def close(self) -> None:
        """Let go of the target (its connection, its open files)."""

    async def source(self) -> str | None:
        """The id of the source database its watermarks were written from (None: none yet)."""

    async def reset(self) -> None:
        """Forget the watermarks and the rows exported so far (a run from the start follows)."""

    async def watermarks(self) -> dict[str, Watermark]:
        """Each stream's watermark as the last committed batch left it (absent: from the start)."""

    async def write(self, stream: str, batch: Batch, source: str) -> None:
        """Apply the batch and set the stream's watermark to ``batch.mark`` (from ``source``), all or nothing."""


class ExportFailed(Exception):
    """A batch could not be read or written; the target keeps what the batches before it committed."""

    def __init__(self, table: str, batch: int, cause: BaseException) -> None:
        super().__init__(f"table {table}, batch {batch} failed: {type(cause).__name__}: {cause}")
        self.table, self.batch = table, batch


class CannotContinue(Exception):
    """The target's watermarks cannot be continued from this source: nothing was written; ``--reset``."""


def _check(identity: export_source.Identity, theirs: str | None, marks: dict[str, Watermark]) -> None:
    if theirs is not None and theirs != identity.source_id:
        raise CannotContinue(f"the target was exported from source database {theirs}, this is "
                             f"{identity.source_id}; run with --reset to empty the target and start over")
    # the last tombstone pruned is behind the target's cursor: it read them all (its pending transactions
    # are not checked: they are any of the cluster's running at its last run, and one of them whose deletes
    # were pruned would have stayed open for the whole --older-than period)
    mark = marks.get("tombstones")
    if mark is not None and mark.cursor < identity.pruned:
        raise CannotContinue("deletes this target had not read yet were pruned (stitcher export prune); run "
                             "with --reset to empty the target and start over")


async def export(db: Database, target: Target, progress: Progress, batch_rows: int,
                 reset: bool = False) -> dict[str, int]:
    """Bring the target up to date with the source (from the start with ``reset``); the source rows done
    per exported table."""
    done: dict[str, int] = {}
    async with export_source.snapshot(db) as (session, horizon):
        identity = await export_source.identity(session)
        if reset:
            await target.reset()
        marks = await target.watermarks()
        _check(identity, await target.source(), marks)
        for stream, table in STREAMS.items():
            mark = marks.get(stream, Watermark())
            window = export_source.Window(mark.cursor, mark.pending, horizon)
            carried = tuple(sorted({*mark.pending, *horizon.running}))
            progress.start(table, await export_source.count(session, stream, window))
            done[table], number = 0, 1
            try:
                async for rows in export_source.changes(session, stream, window, batch_rows):
                    step = await batch(session, stream, rows, Watermark(max(mark.cursor, rows[-1]["cursor"]), carried))
                    await target.write(stream, step, identity.source_id)
                    mark = step.mark
                    number += 1
                    done[table] += len(rows)
                    progress.advance(table, len(rows))
                step = Batch(Watermark((horizon.below, 0), horizon.running))  # the window's end
                if step.mark != mark:
                    await target.write(stream, step, identity.source_id)
            except Exception as exc:
                progress.stop()
                raise ExportFailed(table, number, exc) from exc
            progress.finish(table)
    progress.stop()
    return done
