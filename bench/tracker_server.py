"""Fallback runner for the tracker benchmark: the tracker app alone, the way ``stitcher serve`` runs it.

``python -m bench.tracker_server --port N`` reads the same environment as the service (``REDIS_URL``,
``LOG_JSON``, ``VAR_DIR`` ...), configures the same structured logging and serves
``tracker.app.init_app(settings)`` with uvloop and no access log. ``bench.tracker`` uses it only when
``stitcher serve`` does not start.
"""

from __future__ import annotations

import argparse
import dataclasses

import uvloop

from tracker.app import init_app
from tracker.edge.site import run
from tracker.logs import configure_logging
from tracker.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tracker_server", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    settings = dataclasses.replace(Settings.from_env(), host=args.host, port=args.port)
    if settings.redis_url is None:
        raise SystemExit("REDIS_URL is required")
    configure_logging(settings.log_json)
    run(init_app(settings), host=args.host, port=args.port, reuse_port=False, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
