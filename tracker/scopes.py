"""Who may do what: the scopes an API key can hold, and the one table naming the scope each route needs.

Every route under ``/api/`` and ``/console/`` is in ``ROUTE_SCOPES`` (a test walks the app's route table and
fails on one that is not, and on a row that routes nowhere), so a new route cannot slip in unguarded; a
routed path missing here all the same needs ``admin`` (closed, not open). The table names the service's
paths as text, so the tracker imports nothing of the stitcher (DESIGN: one direction of imports).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from multidict import MultiMapping


class Scope(StrEnum):
    TRACK = "track"  # visitor histories, rejected beacon events
    CONTACTS = "contacts"  # contacts, bulk import, API events, orders, groups
    MESSAGES = "messages"  # prepared messages, smartsend, outboxes
    ADMIN = "admin"  # erase, the console (exports are a command, not a route)


ALL_SCOPES = frozenset(Scope)
GUARDED_PREFIXES = ("/api/", "/console/")  # "/console" itself only redirects to "/console/"


@dataclass(frozen=True)
class Needs:
    """What a route asks of a key: ``scope`` (None: any valid key), or ``erase`` when the request asks to
    erase (``erase`` other than false/0 in the query: unsure is the stricter)."""

    scope: Scope | None
    erase: Scope | None = None

    def scope_for(self, query: MultiMapping[str]) -> Scope | None:
        """The scope a request with this ``query`` needs."""
        if self.erase is not None and any(v.lower() not in ("false", "0") for v in query.getall("erase", [])):
            return self.erase
        return self.scope


ANY_KEY = Needs(None)
TRACK, CONTACTS, MESSAGES, ADMIN = (Needs(s) for s in (Scope.TRACK, Scope.CONTACTS, Scope.MESSAGES, Scope.ADMIN))
DELETE_CONTACT = Needs(Scope.CONTACTS, erase=Scope.ADMIN)

# (method, path as routed) → what it needs; HEAD is GET's. Groups are contacts': a subscribe creates them.
ROUTE_SCOPES: Mapping[tuple[str, str], Needs] = {
    ("GET", "/api/v1/visitor/{vid}/events"): TRACK,
    ("GET", "/api/v1/tracker/rejected"): TRACK,
    # a plugin checks its key with these, whatever the key may do
    ("GET", "/api/v1/account/info"): ANY_KEY,
    ("GET", "/api/v1/version"): ANY_KEY,
    ("GET", "/api/openapi.json"): ANY_KEY,  # the API's description: whoever may call some of it may read it
    ("POST", "/api/v1/contact"): CONTACTS,
    ("PUT", "/api/v1/contact/{contact_id}"): CONTACTS,
    ("POST", "/api/v1/contact/subscribe"): CONTACTS,
    ("GET", "/api/v1/contact/{contact_id}"): CONTACTS,
    ("GET", "/api/v1/contact/{contact_id}/events"): CONTACTS,
    ("GET", "/api/v1/contact/{contact_id}/identity-log"): CONTACTS,
    ("DELETE", "/api/v1/contact/{contact_id}"): DELETE_CONTACT,
    ("DELETE", "/api/v1/contact"): DELETE_CONTACT,
    ("GET", "/api/v1/contacts"): CONTACTS,
    ("POST", "/api/v1/contacts"): CONTACTS,
    ("GET", "/api/v1/importstatus/{session_id}"): CONTACTS,
    ("POST", "/api/v1/event"): CONTACTS,
    ("POST", "/api/v2/event"): CONTACTS,
    ("GET", "/api/v1/events/held"): CONTACTS,
    ("POST", "/api/v1/orders"): CONTACTS,
    ("GET", "/api/v1/contact/{contact_id}/orders"): CONTACTS,
    ("POST", "/api/v1/groups"): CONTACTS,
    ("GET", "/api/v1/groups"): CONTACTS,
    ("GET", "/api/v1/group/{group_id}"): CONTACTS,
    ("DELETE", "/api/v1/group/{group_id}"): CONTACTS,
    ("GET", "/api/v1/group/{group_id}/contacts"): CONTACTS,
    ("POST", "/api/v1/messages"): MESSAGES,
    ("GET", "/api/v1/messages"): MESSAGES,
    ("GET", "/api/v1/message/{message_id}"): MESSAGES,
    ("POST", "/api/v1/message/{message_id}/smartsend"): MESSAGES,
    ("POST", "/api/v1/message/email"): MESSAGES,
    ("GET", "/api/v1/message/{message_id}/outbox"): MESSAGES,
    ("GET", "/api/v1/contact/{contact_id}/messages"): MESSAGES,
    ("GET", "/console/"): ADMIN,
    ("GET", "/console/static/{name}"): ADMIN,
    ("POST", "/console/search"): ADMIN,
    ("GET", "/console/contact/{contact_id}"): ADMIN,
    ("GET", "/console/overview"): ADMIN,
}
_UNLISTED = ADMIN  # a guarded route missing from the table: closed


def table_key(method: str, path: str) -> tuple[str, str]:
    """The row of a route: HEAD is GET's, and an ``/api/`` path's trailing-slash twin (tracker.routing) is
    the path's."""
    if path.startswith("/api/") and path.endswith("/"):
        path = path.rstrip("/")
    return ("GET" if method == "HEAD" else method, path)


def needs_of(method: str, path: str | None) -> Needs:
    """What a request to the routed ``path`` (None: no route matched, a 404 or 405 to come) needs."""
    if path is None:
        return ANY_KEY  # a key still, so that nobody learns which paths exist
    return ROUTE_SCOPES.get(table_key(method, path), _UNLISTED)


def is_guarded(path: str) -> bool:
    return path.startswith(GUARDED_PREFIXES)
