"""``python -m bench [--profile] [NAME ...]``: run the benchmarks in order, print them, save the figures.

Figures go to ``bench/out/results.json``, merged per benchmark name (a run of one benchmark keeps the
others' last figures). A benchmark module that does not exist yet is skipped; one that fails is reported
and the others still run (the exit status is then 1).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# run in this order; bench.<name> must define main() -> dict
BENCHMARKS = ("tracker", "workers", "instructions", "stitch", "contacts", "imports", "orders", "events", "segments",
              "messages", "exports", "identify", "soak")
OUT = Path(__file__).resolve().parent / "out" / "results.json"


def _terminate(signum: int, frame: Any) -> None:
    # turn SIGTERM into the same unwinding as Ctrl-C, so every benchmark's finally block stops its servers
    raise KeyboardInterrupt(f"signal {signum}")


def _load(name: str) -> Any | None:
    module = f"bench.{name}"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


def _save(figures: dict[str, Any]) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    merged: dict[str, Any] = {}
    if OUT.exists():
        try:
            merged = json.loads(OUT.read_text())
        except ValueError:
            merged = {}
    merged.update(figures)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(OUT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the service under load with py-spy (same as BENCH_PROFILE=1)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    if args.profile:
        os.environ["BENCH_PROFILE"] = "1"
    signal.signal(signal.SIGTERM, _terminate)
    failed = False
    for name in args.names or BENCHMARKS:
        started = time.monotonic()
        try:
            module = _load(name)
            if module is None:
                print(f"== bench.{name}: not written yet, skipped\n", flush=True)
                continue
            print(f"== bench.{name}", flush=True)
            figures = module.main()
        except KeyboardInterrupt:
            print(f"\nbench.{name} interrupted; its servers were stopped", file=sys.stderr)
            return 130
        except Exception as exc:
            traceback.print_exc()
            failed = True
            figures = {"error": f"{type(exc).__name__}: {exc}"}
        figures = dict(figures or {})
        figures["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        figures["duration_s"] = round(time.monotonic() - started, 1)
        _save({name: figures})
        print(f"== bench.{name}: {figures['duration_s']} s; figures in {OUT}\n", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
