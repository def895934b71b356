"""The tracker application: ``init_app(settings)`` builds it; resources live in ``cleanup_ctx``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

from tracker.answers import UNAVAILABLE as TRACKER_UNAVAILABLE
from tracker.answers import Tracking
from tracker.apilimit import api_rate_limit
from tracker.beacon import Limits
from tracker.clientip import ClientAddress
from tracker.connection import HANDLER_ARGS
from tracker.eventlog import EventLog
from tracker.groupcommit import GroupCommitter
from tracker.http import API_KEYS, ERROR_STATUS, METRICS, UNAVAILABLE, edge_middleware
from tracker.logs import OUTPUT, flush_periodically
from tracker.metrics import Metrics
from tracker.ratelimit import Limiter
from tracker.resp import RespConnection
from tracker.routes import EVENTLOG, LIMITER, LIMITS, READY_CHECKS, SCRIPT, SETTINGS, TRACKING, routes
from tracker.routing import answer_with_and_without_trailing_slash
from tracker.script import Script
from tracker.settings import Settings
from tracker.tasks import stop_task

REDIS = web.AppKey("redis", Redis)


def connect_redis(url: str, timeout: float = 1.0) -> Redis:
    """A client that fails fast: no retries or backoff, so a Redis outage becomes a quick 503, not a hang.

    Maintenance notifications are off: with them on ("auto"), redis-py 8.1 skips its check for connections
    the server closed, so the first call after a Redis restart would fail (redis/redis-py#4128).
    """
    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                          retry=Retry(NoBackoff(), 0), health_check_interval=0,
                          max_connections=64,
                          maint_notifications_config=MaintNotificationsConfig(enabled=False))


def init_app(settings: Settings, app: web.Application | None = None) -> web.Application:
    """The tracking routes on ``app`` (a new one if None); Redis must be reachable at ``settings.redis_url``."""
    if settings.redis_url is None:
        raise ValueError("settings.redis_url is required (the CLI starts an embedded Redis when unset)")
    if app is None:
        app = web.Application(middlewares=[edge_middleware, api_rate_limit], handler_args=HANDLER_ARGS,
                              client_max_size=max(settings.max_body_bytes, 1024 * 1024) + 1024)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[API_KEYS] = settings.api_keys
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
    committer = GroupCommitter(RespConnection(settings.redis_url, settings.redis_timeout), settings.redis_timeout,
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
    yield
    if limiter is not None:
        await limiter.stop()
    await committer.stop()
    await stop_task(log_flusher)
    OUTPUT.flush()
    await redis.aclose()
