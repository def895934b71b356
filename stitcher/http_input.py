"""What every API handler reads from a request: the JSON body, query parameters, ids — checked once, here.

Shared by the contacts API and the packages beside it (imports, events, orders), so each refuses bad input
the same way: a 4xx naming the field, never a 500.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web
from multidict import MultiMapping

from stitcher import jsonbody
from stitcher.domain.identifiers import Normaliser
from stitcher.store.db import Database
from tracker.errors import UnsupportedMediaType, ValidationFailed
from tracker.http import REQUEST_ID, read_body

T = TypeVar("T")

DB = web.AppKey("db", Database)
NORMALISER = web.AppKey("normaliser", Normaliser)
MAX_JSON_BYTES = 1024 * 1024
MAX_START, MAX_ROWS = 10_000_000, 500  # an offset page: the first row (1-based) and rows per page


async def read_json(request: web.Request, limit: int = MAX_JSON_BYTES, *, judged: bool = True) -> Any:
    """The JSON body: 415 for another media type, 413 past ``limit`` bytes (1 MiB), 400 naming the syntax
    error or each place ``jsonbody.loads`` refuses (duplicate keys, NUL, numbers past 64 bits, nesting past
    the limit). With ``judged=False`` the refused places are left for the caller (``jsonbody.problems``)."""
    if request.content_type not in ("application/json", "text/plain", "application/octet-stream"):
        raise UnsupportedMediaType(f"expected application/json, got {request.content_type}")
    raw = await read_body(request, limit)
    return jsonbody.loads(raw) if judged else jsonbody.decode(raw)


def query(request: web.Request) -> MultiMapping[str]:
    """The query parameters, each refused with a 400 naming it if its text cannot reach SQL (a NUL)."""
    errors = [{"field": name, "message": why} for name, value in request.query.items()
              if (why := jsonbody.text_problem(name) or jsonbody.text_problem(value)) is not None]
    if errors:
        raise ValidationFailed(errors)
    return request.query


def request_id(request: web.Request) -> str | None:
    """The id the edge middleware answers this request with (X-Request-Id), for the identity log."""
    return request.get(REQUEST_ID)


def path_contact_id(request: web.Request) -> int:
    return path_id(request, "contact_id", "contactId")


def path_id(request: web.Request, key: str, field: str) -> int:
    """The positive integer id in the path's ``{key}``; a 400 naming ``field`` otherwise."""
    raw = request.match_info[key]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or int(raw) < 1:  # the length first, see _int
        raise ValidationFailed([{"field": field, "message": "must be a positive integer"}])
    return int(raw)


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter from ``lo`` to ``hi`` (at most 2**63 - 1), ``default`` when absent."""
    raw = query(request).get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or not lo <= int(raw) <= hi:
        raise ValidationFailed([{"field": name, "message": f"must be an integer from {lo} to {hi}"}])
    return int(raw)


def offset_page(request: web.Request) -> tuple[int, int]:
    """The platform's page of a list: ``startindex`` (1-based, default 1) and ``maxrows`` (1-500, default 500);
    the answer carries the whole count in a ``TotalCount`` header."""
    return int_param(request, "startindex", 1, 1, MAX_START), int_param(request, "maxrows", MAX_ROWS, 1, MAX_ROWS)


def keyset_after(request: web.Request) -> tuple[int, int] | None:
    """``?after=`` of a keyset page: the previous page's ``next``, ``<time>.<row id>``; None when absent."""
    cursor = query(request).get("after")
    if not cursor:
        return None
    t, _, row = cursor.partition(".")
    if not all(part.isascii() and part.isdigit() and len(part) <= 19 and int(part) < 2**63 for part in (t, row)):
        raise ValidationFailed([{"field": "after", "message": "must be the `next` of a previous page"}])
    return int(t), int(row)


def keyset_page(rows: Sequence[T], limit: int,
                key: Callable[[T], tuple[int, int | None]]) -> tuple[list[T], str | None]:
    """The first ``limit`` of ``rows`` (read ``limit + 1``, ordered by ``key``: time, then row id) and the
    ``next`` cursor ``keyset_after`` reads back, ``<time>.<row id>``; None on the last page."""
    page = list(rows[:limit])
    if len(rows) <= limit:
        return page, None
    t, row = key(page[-1])
    return page, f"{t}.{row}"
