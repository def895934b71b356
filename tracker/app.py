"""The tracker application: ``init_app(settings)`` builds it; resources live in ``cleanup_ctx``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from tracker.answers import UNAVAILABLE as TRACKER_UNAVAILABLE
from tracker.answers import Tracking
from tracker.apilimit import api_rate_limit
from tracker.beacon import Limits
from tracker.clientip import ClientAddress
from tracker.connection import HANDLER_ARGS
from tracker.eventlog import EventLog
from tracker.groupcommit import GroupCommitter
from tracker.http import API_KEYS, ERROR_STATUS, METRICS, UNAVAILABLE, edge_middleware
from tracker.identify import Identify, IdentifyLog
from tracker.logs import OUTPUT, flush_periodically
from tracker.metrics import Metrics
from tracker.ratelimit import Limiter
from tracker.redis_client import AnyRedis, connect_redis, is_cluster
from tracker.resp import RespConnection
from tracker.resp_cluster import ClusterRespConnection
from tracker.routes import EVENTLOG, IDENTIFY, LIMITER, LIMITS, READY_CHECKS, SCRIPT, SETTINGS, TRACKING, routes
from tracker.routing import answer_with_and_without_trailing_slash
from tracker.script import Script
from tracker.settings import Settings
from tracker.tasks import stop_task

REDIS: web.AppKey[AnyRedis] = web.AppKey("redis")


def init_app(settings: Settings, app: web.Application | None = None) -> web.Application:
    """The tracking routes on ``app`` (a new one if None); Redis must be reachable at ``settings.redis_url``."""
    if settings.redis_url is None:
        raise ValueError("settings.redis_url is required (the CLI starts an embedded Redis when unset)")
    if app is None:
        app = web.Application(middlewares=[edge_middleware, api_rate_limit], handler_args=HANDLER_ARGS,
                              client_max_size=max(settings.max_body_bytes, 1024 * 1024) + 1024)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[API_KEYS] = settings.key_ring
    app[UNAVAILABLE] = TRACKER_UNAVAILABLE
    app[ERROR_STATUS] = {}
    app[READY_CHECKS] = {}
    app[LIMITS] = Limits(settings.max_body_bytes, settings.max_events, settings.max_string_bytes,
                         settings.max_props_bytes)
    app[SCRIPT] = Script.load(settings.static_dir / "t.js")
    app.cleanup_ctx.append(_redis_ctx)
    app.add_routes(routes)
    answer_with_and_without_trailing_slash(app)
    return app


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    assert settings.redis_url is not None
    redis = connect_redis(settings.redis_url, settings.redis_timeout)
    resp = ClusterRespConnection if is_cluster(settings.redis_url) else RespConnection
    committer = GroupCommitter(resp(settings.redis_url, settings.redis_timeout), settings.redis_timeout,
                               on_flush=app[METRICS].observe_batch)
    committer.start()
    log_flusher = asyncio.get_running_loop().create_task(flush_periodically(), name="log-flush")
    app[REDIS] = redis
    app[EVENTLOG] = EventLog(redis, partitions=settings.partitions, anon_ttl_seconds=settings.anon_ttl_seconds,
                             history_cap=settings.history_cap, rejected_cap=settings.rejected_cap,
                             committer=committer)
    limiter = None
    if settings.rate_limit_track is not None or settings.rate_limit_api is not None:
        limiter = app[LIMITER] = Limiter(committer, redis, track=settings.rate_limit_track, api=settings.rate_limit_api,
                                         on_error=app[METRICS].limiter_errors.inc)
    app[TRACKING] = Tracking(eventlog=app[EVENTLOG], metrics=app[METRICS], limits=app[LIMITS], script=app[SCRIPT],
                             allowed_origins=settings.allowed_origins, log_sample=settings.beacon_log_sample,
                             limiter=limiter if settings.rate_limit_track is not None else None,
                             client=ClientAddress(settings.trusted_proxies))
    app[IDENTIFY] = Identify(settings.identify_secrets, IdentifyLog(redis))
    yield
    if limiter is not None:
        await limiter.stop()
    await committer.stop()
    await stop_task(log_flusher)
    OUTPUT.flush()
    await redis.aclose()
