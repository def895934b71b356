"""``stitcher export postgres|bigquery|prune``: opens the source and the target, runs the export, and says
how it went — exit 0, or exit 1 with one line (``stitcher export: …``) naming what failed, never a
traceback: the table and batch that failed, a target that cannot be opened or written, a target exported
from another database."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import asyncpg
from sqlalchemy.exc import SQLAlchemyError

from stitcher.exports.bigquery import BigQueryTarget
from stitcher.exports.postgres import PostgresTarget
from stitcher.exports.progress import for_stream
from stitcher.exports.watermark import CannotContinue, ExportFailed, Target, export
from stitcher.store import export_source
from stitcher.store.db import Database

BATCH_ROWS = 5000
DAY_MS = 86_400_000
# what opening or reading a database or a directory raises (TimeoutError is an OSError)
_FAILURES = (OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError, SQLAlchemyError)


def _reason(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())  # one line


async def _open(target: str, url: str | None, schema: str, out: Path | None) -> Target:
    if target == "postgres":
        assert url is not None
        return await PostgresTarget.connect(url, schema)
    assert out is not None
    return BigQueryTarget(out)


async def run(database_url: str, target: str, *, url: str | None = None, schema: str = "public",
              out: Path | None = None, batch_rows: int = BATCH_ROWS, reset: bool = False,
              err: TextIO | None = None) -> int:
    """Export into ``target`` (``postgres``: ``url`` and ``schema``; ``bigquery``: ``out``), from the start
    with ``reset``; the exit code."""
    err = err or sys.stderr
    db = Database(database_url)
    try:
        try:
            opened = await _open(target, url, schema, out)
        except Exception as exc:  # a URL asyncpg takes apart badly raises what it meets (OverflowError, …)
            print(f"stitcher export: cannot open the target: {_reason(exc)}", file=err)
            return 1
        progress = for_stream(err)
        failure = None
        try:
            await export(db, opened, progress, batch_rows, reset)
        except (ExportFailed, CannotContinue) as exc:
            failure = " ".join(str(exc).split())
        except _FAILURES as exc:  # the source or the target before the first batch
            failure = _reason(exc)
        finally:  # also when interrupted (Ctrl-C, SIGTERM): a batch being written is rolled back
            progress.stop()
            closed = await _close(opened, err)
        if failure is not None:
            print(f"stitcher export: {failure}", file=err)
        return 0 if closed and failure is None else 1
    finally:
        await db.close()


async def _close(opened: Target, err: TextIO) -> bool:
    """Close the target (the BigQuery README is written then); False, said in one line, if that failed."""
    try:
        await opened.close()
    except Exception as exc:
        print(f"stitcher export: closing the target failed: {_reason(exc)}", file=err)
        return False
    return True


async def prune(database_url: str, older_than_days: float, err: TextIO | None = None) -> int:
    """``stitcher export prune --older-than DAYS``: delete tombstones older than that; the exit code."""
    err = err or sys.stderr
    db = Database(database_url)
    try:
        gone = await export_source.prune(db, int(older_than_days * DAY_MS))
    except _FAILURES as exc:
        print(f"stitcher export prune: {_reason(exc)}", file=err)
        return 1
    finally:
        await db.close()
    print(f"stitcher export prune: {gone} tombstones older than {older_than_days:g} days deleted", file=err)
    return 0
