"""The BigQuery target (``stitcher export bigquery --out DIR``): newline-delimited JSON files for ``bq
load``, never a network call.

Each run writes its own files, ``<table>-<run>.ndjson`` with the rows changed since the last run and
``keys-<run>.ndjson`` with the keys those rows replace or that were deleted; ``<table>.schema.json`` (from
the same column definitions as the PostgreSQL target) and a README.md with each run's ``bq`` commands sit
beside them. A batch is appended and flushed to disk before ``watermarks.json`` (replaced atomically)
moves past it: a run that dies leaves at most rows the next run writes again, which its keys replace.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from stitcher.exports.changes import Batch, Watermark
from stitcher.exports.tables import BY_NAME, TABLES, Column, ExportTable, Kind

WATERMARKS = "watermarks.json"
KEYS = ExportTable("keys", (Column("tbl", Kind.STRING, True), Column("col", Kind.STRING, True),
                            Column("value", Kind.INTEGER, True)), ())
_README = """# Stitcher export for BigQuery

Each run wrote its own files; load the runs in order (each one's keys delete the rows it replaces or that
were erased, merged away or deleted, then its rows are appended). Set `DATASET` to your dataset.
The schemas (`*.schema.json`) are BigQuery JSON schema files.
"""


def _json(row: Mapping[str, Any]) -> bytes:
    """A row as one NDJSON line: timestamps in RFC 3339 UTC, JSON columns as JSON values."""
    return orjson.dumps(row, option=orjson.OPT_UTC_Z) + b"\n"


class BigQueryTarget:
    def __init__(self, out: Path, run: str | None = None) -> None:
        self._out = out
        self._run = run or datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self._files: dict[str, IO[bytes]] = {}
        self._reset = False
        self._keyed: set[tuple[str, str]] = set()  # the (table, column) pairs this run's keys name
        out.mkdir(parents=True, exist_ok=True)
        for table in (*TABLES, KEYS):
            (out / f"{table.name}.schema.json").write_text(json.dumps(table.bigquery_schema(), indent=2) + "\n")

    def _state(self) -> dict[str, Any]:
        """``watermarks.json``: ``{"source": id, "streams": {stream: {cursor, pending}}}`` (before the source
        was kept: the streams alone)."""
        path = self._out / WATERMARKS
        if not path.exists():
            return {"source": None, "streams": {}}
        state = json.loads(path.read_text())
        return state if "streams" in state else {"source": None, "streams": state}

    async def source(self) -> str | None:
        return self._state()["source"]  # type: ignore[no-any-return]

    async def reset(self) -> None:
        (self._out / WATERMARKS).unlink(missing_ok=True)
        self._reset = True

    async def watermarks(self) -> dict[str, Watermark]:
        return {stream: Watermark((m["cursor"][0], m["cursor"][1]), tuple(m["pending"]))
                for stream, m in self._state()["streams"].items()}

    async def write(self, stream: str, batch: Batch, source: str) -> None:
        keys = [{"tbl": d.table, "col": d.column, "value": v} for d in batch.deletes for v in d.values]
        for name, rows in batch.rows.items():
            key = BY_NAME[name].key
            if len(key) == 1:  # order_items go by their order's delete
                keys.extend({"tbl": name, "col": key[0], "value": r[key[0]]} for r in rows)
            self._append(name, rows)
        self._append(KEYS.name, keys)
        self._keyed.update((str(k["tbl"]), str(k["col"])) for k in keys)
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
        marks = await self.watermarks() | {stream: batch.mark}
        tmp = self._out / f".{WATERMARKS}.tmp"
        tmp.write_text(json.dumps({"source": source, "streams": {s: {"cursor": m.cursor, "pending": m.pending}
                                                                 for s, m in marks.items()}}))
        os.replace(tmp, self._out / WATERMARKS)

    def _append(self, name: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if name not in self._files:
            self._files[name] = (self._out / f"{name}-{self._run}.ndjson").open("ab")
        self._files[name].writelines(_json(r) for r in rows)

    async def close(self) -> None:
        """Close this run's files and add its ``bq`` commands to the README."""
        for f in self._files.values():
            f.close()
        readme = self._out / "README.md"
        text = readme.read_text() if readme.exists() else _README
        readme.write_text(text + self._commands())

    def _commands(self) -> str:
        if not self._files and not self._reset:
            return f"\n## Run {self._run}\n\nNothing changed.\n"
        load = "bq load --source_format=NEWLINE_DELIMITED_JSON"
        lines = [f"\n## Run {self._run}\n", "```sh"]
        if self._reset:  # started over (--reset): the runs before are replaced by this one
            lines.insert(1, "Started over (`--reset`): the tables are emptied first; earlier runs need no loading.\n")
            lines += [f"bq query --use_legacy_sql=false 'TRUNCATE TABLE DATASET.{t.name}'" for t in TABLES]
        if KEYS.name in self._files:
            lines.append(f"{load} --replace DATASET._stitcher_keys keys-{self._run}.ndjson keys.schema.json")
            lines += [f"bq query --use_legacy_sql=false 'DELETE FROM DATASET.{t} WHERE {c} IN "
                      f"(SELECT value FROM DATASET._stitcher_keys WHERE tbl = \"{t}\" AND col = \"{c}\")'"
                      for t, c in sorted(self._keyed)]
        lines += [f"{load} DATASET.{t.name} {t.name}-{self._run}.ndjson {t.name}.schema.json"
                  for t in TABLES if t.name in self._files]
        return "\n".join([*lines, "```", ""])
