"""The baseline: a bare aiohttp app whose ``POST /t`` reads the body, parses it with orjson and answers 204.

``python -m bench.bare --port N`` runs it on 127.0.0.1 with uvloop and no access log, like the real service.
Whatever the real beacon handler costs beyond this is the service's own overhead.
"""

from __future__ import annotations

import argparse
import asyncio

import orjson
from aiohttp import web


async def beacon(request: web.Request) -> web.Response:
    orjson.loads(await request.read())
    return web.Response(status=204)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/t", beacon)
    app.router.add_get("/healthz", healthz)
    return app


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.new_event_loop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    web.run_app(make_app(), host=args.host, port=args.port, access_log=None, print=None, loop=_new_loop())


if __name__ == "__main__":
    main()
