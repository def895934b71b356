"""Every API path answers with and without a trailing slash: the same handler, never a redirect.

Clients written for the platform whose API we follow call ``/api/v1/contact/`` and ``/api/v1/contacts/?…``;
a redirect would not do (a client following a 301 turns a POST into a GET). So once every route is
registered — at start-up, just before aiohttp freezes the router — each ``/api/`` route gets a twin at its
path plus ``/`` with the same handler; a route added by any package, before start-up, gets one too.

A twin is built from the route's canonical path, in which a variable's custom pattern (``{id:[0-9]+}``) reads
as the plain ``{id}``: the handler must check such a value itself, as every handler here does.
"""

from __future__ import annotations

from aiohttp import web

API_PREFIX = "/api/"


def answer_with_and_without_trailing_slash(app: web.Application) -> None:
    """Give every ``/api/`` route of ``app`` a trailing-slash twin when the app starts."""
    app.on_startup.append(_add_trailing_slash_twins)


async def _add_trailing_slash_twins(app: web.Application) -> None:
    twins: dict[str, list[web.AbstractRoute]] = {}
    for resource in app.router.resources():
        path = resource.canonical
        if path.startswith(API_PREFIX) and not path.endswith("/"):
            twins.setdefault(path + "/", []).extend(resource)
    taken = {(route.method, route.resource.canonical) for route in app.router.routes()
             if route.resource is not None}
    for path, routes in twins.items():
        missing = [route for route in routes if (route.method, path) not in taken]
        if missing:
            twin = app.router.add_resource(path)
            for route in missing:
                twin.add_route(route.method, route.handler)
