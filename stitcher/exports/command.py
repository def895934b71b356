"""``stitcher export postgres|bigquery``: opens the source and the target, runs the export, and says how it
went (exit 1 naming the table and batch that failed)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import asyncpg

from stitcher.exports.bigquery import BigQueryTarget
from stitcher.exports.postgres import PostgresTarget
from stitcher.exports.progress import for_stream
from stitcher.exports.watermark import ExportFailed, export
from stitcher.store.db import Database

BATCH_ROWS = 5000


async def run(database_url: str, target: str, *, url: str | None = None, schema: str = "public",
              out: Path | None = None, batch_rows: int = BATCH_ROWS, err: TextIO | None = None) -> int:
    """Export into ``target`` (``postgres``: ``url`` and ``schema``; ``bigquery``: ``out``); the exit code."""
    err = err or sys.stderr
    db = Database(database_url)
    progress = for_stream(err)
    try:
        if target == "postgres":
            assert url is not None
            try:
                pg = await PostgresTarget.connect(url, schema)
            except (OSError, ValueError, asyncpg.PostgresError) as exc:  # TimeoutError is an OSError
                print(f"stitcher export: cannot open the target: {type(exc).__name__}: {exc}", file=err)
                return 1
            try:
                await export(db, pg, progress, batch_rows)
            finally:
                await pg.close()
        else:
            assert out is not None
            files = BigQueryTarget(out)
            try:
                await export(db, files, progress, batch_rows)
            finally:
                files.close()
        return 0
    except ExportFailed as exc:
        print(f"stitcher export: {exc}", file=err)
        return 1
    finally:
        await db.close()
