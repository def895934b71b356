"""The ``stitcher`` command: serve, db upgrade, replay, held-events."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from tracker.embedded_redis import AlreadyRunning, EmbeddedRedis
from tracker.logs import configure_logging
from tracker.settings import Settings

log = structlog.get_logger("cli")


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    if args.workers > 1:
        return _serve_workers(settings, args.workers)  # the parent serves nothing: it need not load the app
    from stitcher.app import init_app
    from tracker.edge.site import run

    embedded: EmbeddedRedis | None = None
    if settings.redis_url is None:
        embedded = EmbeddedRedis(settings.var_dir / "redis", persistent=True)
        try:
            settings = dataclasses.replace(settings, redis_url=embedded.start())
        except AlreadyRunning as exc:
            print(f"stitcher: {exc}", file=sys.stderr)
            return 2
        log.info("embedded redis started", url=settings.redis_url)
    try:
        if not args.child:  # a child of `--workers N`: its parent migrated the schema and says where it listens
            _upgrade(settings)
        app = init_app(settings)
        app.on_startup.append(_tune_gc)
        if not args.child:
            print(f"Stitcher listening on http://{settings.host}:{settings.port}  "
                  f"(redis: {hide_password(settings.redis_url or '')}; "
                  f"database: {_safe(settings.effective_database_url)}; "
                  f"{_keys_note(settings)}; demo: http://{settings.host}:{settings.port}/demo/)",
                  flush=True)
        run(app, host=settings.host, port=settings.port, reuse_port=args.reuse_port or args.child,
            loop=_new_loop())
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def _keys_note(settings: Settings) -> str:
    """The built-in dev key is shown (``make run``); configured keys are secrets, kept out of the output."""
    if settings.api_keys == Settings.api_keys:
        return f"dev API key: {settings.api_keys[0]!r}"
    return f"API keys: {len(settings.key_ring.keys)} configured"


def _serve_workers(settings: Settings, workers: int) -> int:
    """``serve --workers N`` (N > 1): migrate and start the embedded Redis once, then supervise N children."""
    import socket

    from stitcher.supervisor import Supervisor, child_command, child_env

    if settings.effective_database_url.startswith("sqlite"):
        print("stitcher: --workers needs PostgreSQL (DATABASE_URL=postgresql+asyncpg://...): on SQLite the "
              "service keeps its write transactions apart with a lock inside one process, which several "
              "processes would not share. Run one process on SQLite.", file=sys.stderr)
        return 2
    if not settings.port:
        print("stitcher: --workers needs a fixed --port (with port 0 each process would get its own)",
              file=sys.stderr)
        return 2
    try:  # a port another program holds: say so once, instead of N children failing in a loop
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            probe.bind((settings.host, settings.port))
    except OSError as exc:
        print(f"stitcher: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
        return 2
    embedded: EmbeddedRedis | None = None
    redis_url = settings.redis_url
    if redis_url is None:
        embedded = EmbeddedRedis(settings.var_dir / "redis", persistent=True)
        try:
            redis_url = embedded.start()
        except AlreadyRunning as exc:
            print(f"stitcher: {exc}", file=sys.stderr)
            return 2
        log.info("embedded redis started", url=redis_url)
    try:
        _upgrade(settings)
        print(f"Stitcher listening on http://{settings.host}:{settings.port} with {workers} processes  "
              f"(redis: {hide_password(redis_url)}; database: {_safe(settings.effective_database_url)}; "
              f"{_keys_note(settings)})", flush=True)
        return Supervisor(child_command(settings.host, settings.port), child_env(redis_url), workers).run()
    finally:
        if embedded is not None:
            embedded.stop()


async def _tune_gc(app: object) -> None:
    """Move start-up objects out of the collector's sight and collect the young generation less often.

    Each beacon allocates short-lived dicts; with the default thresholds a full collection runs every few
    thousand requests and stalls the loop for tens of milliseconds, which is most of the p99 tail.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.new_event_loop()


def hide_password(url: str) -> str:
    """A Redis URL (``redis://``, ``rediss+cluster://user:secret@a:1,b:2``…) with its password starred."""
    return re.sub(r"^([a-z+]+://[^:@/]*):[^@/]*@", r"\1:***@", url)


def _safe(url: str) -> str:
    """A database URL without its password, for printing."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _upgrade(settings: Settings) -> None:
    from stitcher.store.migrate import upgrade

    upgrade(settings)


def _non_negative(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise argparse.ArgumentTypeError("must be a non-negative integer")
    return int(text)


def _workers(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError("must be a whole number from 1 to 64")
    return int(text)


def _positive_days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not 0 < days <= 36_500:  # also NaN
        raise argparse.ArgumentTypeError("must be a number of days above 0 (at most 36500)")
    return days


def _export(settings: Settings, args: argparse.Namespace) -> int:
    """``export``: the run's exit code; interrupted (Ctrl-C, SIGTERM), one line and 130 — the batch being
    written was rolled back, the target is as the last committed batch left it."""
    import signal

    from stitcher.exports.command import prune, run

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        if args.target == "prune":
            return asyncio.run(prune(settings.effective_database_url, args.days))
        return asyncio.run(run(settings.effective_database_url, args.target, url=getattr(args, "url", None),
                               schema=getattr(args, "schema", "public"), out=getattr(args, "out", None),
                               reset=args.reset))
    except KeyboardInterrupt:
        print("stitcher export: interrupted; the target keeps the batches committed before", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _held_events(settings: Settings, args: argparse.Namespace) -> int:
    """``held-events``: the held API events as JSON lines (oldest first; ``--after`` the last line's ``row``
    to go on), or ``expire``: delete those past ``HELD_EVENT_TTL_DAYS`` now, as the worker's sweeper does."""
    import orjson

    from stitcher.app import normaliser
    from stitcher.domain.errors import ValidationFailed
    from stitcher.store import held_events
    from stitcher.store.db import Database

    try:
        key = held_events.held_key(args.identifier, normaliser(settings), "--identifier") \
            if args.identifier is not None else None
    except ValidationFailed as exc:
        print(f"stitcher: {exc.message}", file=sys.stderr)
        return 2

    async def run() -> int:
        db = Database(settings.effective_database_url)
        try:
            if args.action == "expire":
                print(orjson.dumps({"expired": await held_events.expire(db)}).decode())
                return 0
            after, left = args.after, args.limit
            async with db.reader() as s:
                while left > 0:  # pages of at most 1000, up to --limit events
                    page = await held_events.held(s, limit=min(left, 1000), after=after, key=key)
                    for event in page.events:
                        sys.stdout.write(orjson.dumps(event).decode() + "\n")
                    left -= len(page.events)
                    if page.next is None:
                        break
                    after = page.next
            return 0
        finally:
            await db.close()

    return asyncio.run(run())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stitcher", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the service (tracker, contacts API, worker)")
    serve.add_argument("--port", type=int, help="overrides PORT")
    serve.add_argument("--host", help="overrides HOST")
    serve.add_argument("--reuse-port", action="store_true", help="let several processes share the port")
    serve.add_argument("--workers", type=_workers, default=1, metavar="N",
                       help="run N processes on the port (SO_REUSEPORT), one parent supervising them; needs "
                            "PostgreSQL (default 1: this process serves)")
    serve.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # a process of --workers N
    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade"])
    replay = sub.add_parser("replay", help="play a fixture file against a running service")
    replay.add_argument("file")
    replay.add_argument("--url", default="http://127.0.0.1:8080")
    replay.add_argument("--api-key", default=None,
                        help="defaults to the first plain key of API_KEYS that holds every scope")
    held = sub.add_parser("held-events", help="list the API events held for people not known yet, or expire them")
    held.add_argument("action", nargs="?", choices=["list", "expire"], default="list",
                      help="list (JSON lines, oldest first) or expire (delete those past HELD_EVENT_TTL_DAYS now)")
    held.add_argument("--identifier", help="only those of one person: an email, phone, external ID or heldUnder key")
    held.add_argument("--limit", type=_non_negative, default=100, help="at most this many (default 100)")
    held.add_argument("--after", type=_non_negative, default=0, help="after this row (a listed event's row)")
    export = sub.add_parser("export", help="export contacts, events and orders to a warehouse (incremental)")
    targets = export.add_subparsers(dest="target", required=True)
    to_pg = targets.add_parser("postgres", help="into a PostgreSQL database")
    to_pg.add_argument("--target", required=True, dest="url", help="e.g. postgresql://user@host/warehouse")
    to_pg.add_argument("--schema", default="public", help="schema of the exported tables (default public)")
    to_bq = targets.add_parser("bigquery", help="newline-delimited JSON files and schemas for bq load")
    to_bq.add_argument("--out", required=True, type=Path, help="directory of the files (kept between runs)")
    for to in (to_pg, to_bq):
        to.add_argument("--reset", action="store_true",
                        help="start over: empty the target and export everything (a target exported from "
                             "another database, or one whose unread deletes were pruned, needs it)")
    to_prune = targets.add_parser("prune", help="delete the tombstones of deleted rows older than DAYS")
    to_prune.add_argument("--older-than", required=True, type=_positive_days, metavar="DAYS", dest="days",
                          help="days; a target whose last run is older than that needs --reset afterwards")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except ValueError as exc:  # a setting that cannot be used: say which, without a traceback
        print(f"stitcher: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_json)
    if args.command == "serve":
        if args.port:
            settings = dataclasses.replace(settings, port=args.port)
        if args.host:
            settings = dataclasses.replace(settings, host=args.host)
        return _serve(settings, args)
    if args.command == "db":
        _upgrade(settings)
        print("database schema is up to date")
        return 0
    if args.command == "held-events":
        return _held_events(settings, args)
    if args.command == "export":
        return _export(settings, args)
    if args.command == "replay":
        from stitcher.replay import replay_file_cli

        key = args.api_key or settings.key_ring.first_plain_key()
        if key is None:
            print("stitcher replay: give --api-key: API_KEYS holds no plain key with every scope", file=sys.stderr)
            return 2
        return replay_file_cli(args.file, args.url, key)
    return 2


if __name__ == "__main__":
    sys.exit(main())
