"""How an export shows its progress: on a terminal, rich's live bars (rows done of total, rate, time
left) per table; elsewhere (a log, cron, CI) one summary line per table when it is done."""

from __future__ import annotations

import time
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.text import Text


class Progress(Protocol):
    def start(self, table: str, total: int) -> None: ...

    def advance(self, table: str, rows: int) -> None: ...

    def finish(self, table: str) -> None: ...

    def stop(self) -> None: ...


class _Rate(ProgressColumn):
    """Rows a second since the table started (rich's own speed needs samples a fast table never gives)."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed
        return Text(f"{task.completed / elapsed:,.0f} rows/s" if elapsed else "", style="progress.data.speed")


class Bars:
    """rich's bars, one per table."""

    def __init__(self, out: TextIO) -> None:
        self._bars = RichProgress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), _Rate(),
                                  TimeRemainingColumn(), console=Console(file=out))
        self._tasks: dict[str, TaskID] = {}
        self._bars.start()

    def start(self, table: str, total: int) -> None:
        self._tasks[table] = self._bars.add_task(table, total=total)

    def advance(self, table: str, rows: int) -> None:
        self._bars.advance(self._tasks[table], rows)

    def finish(self, table: str) -> None:
        task = self._tasks[table]
        self._bars.update(task, total=self._bars.tasks[task].completed)

    def stop(self) -> None:
        self._bars.stop()


class Summary:
    """One line per table: ``contacts: 1200 rows in 0.4 s (3000 rows/s)``."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._started: dict[str, float] = {}
        self._rows: dict[str, int] = {}

    def start(self, table: str, total: int) -> None:
        self._started[table], self._rows[table] = time.perf_counter(), 0

    def advance(self, table: str, rows: int) -> None:
        self._rows[table] += rows

    def finish(self, table: str) -> None:
        took = time.perf_counter() - self._started[table]
        rows = self._rows[table]
        print(f"{table}: {rows} rows in {took:.1f} s ({rows / took if took else 0:,.0f} rows/s)", file=self._out,
              flush=True)

    def stop(self) -> None:
        pass


def for_stream(out: TextIO) -> Progress:
    """Bars on a terminal, summary lines elsewhere."""
    return Bars(out) if out.isatty() else Summary(out)
