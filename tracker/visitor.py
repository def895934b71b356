"""Visitor ids: canonical lower-case UUID strings, issued by the collector and kept in a first-party cookie."""

from __future__ import annotations

import re
import uuid

COOKIE = "stitcher_vid"
COOKIE_MAX_AGE = 400 * 86_400  # the longest lifetime browsers honour
_VID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def new_visitor_id() -> str:
    """A fresh random visitor id."""
    return str(uuid.uuid4())


def parse_visitor_id(value: object) -> str | None:
    """The canonical form of ``value`` if it is a well-formed visitor id, else None.

    Upper-case hex is accepted and lower-cased, so a visitor keeps one id whatever a backend echoes back.
    """
    if not isinstance(value, str) or len(value) != 36:
        return None
    if _VID.fullmatch(value):  # the usual case: already canonical
        return value
    value = value.lower()
    return value if _VID.fullmatch(value) else None


def choose_visitor_id(cookie: str | None, body_vid: str | None, reset: bool = False) -> tuple[str, bool]:
    """The visitor id for a request and whether it is new: server cookie > body ``vid`` > a new id.

    ``reset`` (the script's ``stitcher('reset')``) ignores the cookie: the browser starts a new visitor, the
    body's ``vid`` (the new id the script made) if it has one, else a new id. The script keeps sending
    ``reset`` with its new id for a while after the first answer, so a late answer to an older request, which
    sets the cookie back to the old id, cannot win: the newest id does.
    """
    if reset:
        return parse_visitor_id(body_vid) or new_visitor_id(), True
    vid = parse_visitor_id(cookie) if cookie is not None else None
    if vid is None and body_vid is not None:
        vid = parse_visitor_id(body_vid)
    return (vid, False) if vid else (new_visitor_id(), True)
