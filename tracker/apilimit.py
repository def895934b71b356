"""The per-key rate limit on the API: a middleware inside ``tracker.http.edge_middleware``, so after its auth.

Each API key has its own token bucket (``RATE_LIMIT_API``, ``tracker.ratelimit``), named by a digest of the key
as ``check_access`` let it in (``request[API_KEY]``). An empty bucket raises ``RateLimited``, which the edge
middleware answers as JSON: 429, ``Retry-After`` and ``retry_after`` in whole seconds. Requests without a key
(the tracking routes, health, metrics) pass untouched; so does everything when the limit is off, and when the
limiter's Redis fails (it fails open).
"""

from __future__ import annotations

from aiohttp import web

from tracker.http import API_KEY, Handler
from tracker.ratelimit import API
from tracker.routes import LIMITER


@web.middleware
async def api_rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take a token from the bucket of the request's API key before its handler runs."""
    key = request.get(API_KEY)
    if key is not None:
        limiter = request.app.get(LIMITER)
        if limiter is not None and limiter.api is not None:
            await limiter.take(API, limiter.api_key_name(key))
    return await handler(request)
