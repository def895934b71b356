"""The baseline: a bare aiohttp app whose ``POST /t`` reads the body, parses it with orjson and answers 204.

``python -m bench.bare --port N`` runs it on 127.0.0.1 with uvloop and no access log, like the real service.
Whatever the real beacon handler costs beyond this is the service's own overhead.

``--pipeline REDIS_URL`` adds only the write path the issue's target was set with ("a coalescing pipeline"):
after parsing, each request appends its raw body to a Redis list through the service's own group committer
(``tracker.groupcommit`` + ``tracker.resp``) and awaits that write before the 204 — no validation, visitor
cookie, CORS, idempotency, log line or metrics. It shows what group commit itself costs.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from tracker.groupcommit import GroupCommitter
from tracker.resp import RespConnection, command


async def beacon(request: web.Request) -> web.Response:
    orjson.loads(await request.read())
    return web.Response(status=204)


COMMITTER = web.AppKey("committer", GroupCommitter)


async def pipelined_beacon(request: web.Request) -> web.Response:
    raw = await request.read()
    body = orjson.loads(raw)
    await request.app[COMMITTER].submit(command("RPUSH", f"bench:pipeline:{body.get('vid')}", raw))
    return web.Response(status=204)


async def _committer_ctx(app: web.Application, url: str) -> AsyncIterator[None]:
    committer = GroupCommitter(RespConnection(url, 1.0), 1.0)
    committer.start()
    app[COMMITTER] = committer
    yield
    await committer.stop()


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app(pipeline_redis_url: str | None = None) -> web.Application:
    app = web.Application()
    if pipeline_redis_url:
        app.cleanup_ctx.append(functools.partial(_committer_ctx, url=pipeline_redis_url))
        app.router.add_post("/t", pipelined_beacon)
    else:
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
    parser.add_argument("--pipeline", metavar="REDIS_URL", help="also write each body through group commit")
    args = parser.parse_args(argv)
    web.run_app(make_app(args.pipeline), host=args.host, port=args.port, access_log=None, print=None, loop=_new_loop())


if __name__ == "__main__":
    main()
