"""The commands the identity services take: what one call asks for, validated and normalised.

The HTTP layer (``stitcher.payload``) parses request bodies into these; bulk import, events, orders and
smartsend will build the same commands from their rows, so one set of rules serves them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stitcher.domain.identifiers import IdentifierKind, Identity, Ignored

__all__ = ["ContactCommand", "GroupId", "SubscribeCommand"]

# a group named only by its id, and where the request named it (``groups[2].id``); once ``group_refs`` has
# checked it, its id and name
GroupId = tuple[int, str]


@dataclass(frozen=True)
class ContactCommand:
    """Add/update one contact: who (identity), its channels' devices, the profile fields to set, the
    visitors whose anonymous history belongs to it, the named groups to put it in, the messenger channels
    stored without finding anyone (``STORED_ONLY``) and the blank or placeholder values ignored."""

    identity: Identity
    devices: Mapping[tuple[IdentifierKind, str], str | None]
    profile: Mapping[str, Any]  # Contact attributes to set (only those the caller gave)
    visitor_ids: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()  # group names, created when missing
    stored_only: tuple[tuple[IdentifierKind, str], ...] = ()
    ignored: tuple[Ignored, ...] = ()  # {"field", "reason"} of each value treated as absent
    group_ids: tuple[GroupId, ...] = ()  # groups named only by id: joined if they exist, else ignored

    def channels(self) -> list[tuple[IdentifierKind, str, str | None]]:
        """Every channel to store with its device, in request order: the identity's, then the stored-only."""
        return [(k, v, self.devices.get((k, v))) for k, v in (*self.identity.channels, *self.stored_only)]


@dataclass(frozen=True)
class SubscribeCommand:
    """Subscribe one contact, optionally into named groups, from a form."""

    contact: ContactCommand
    groups: tuple[str, ...] = ()
    form_type: str | None = None
    group_ids: tuple[GroupId, ...] = ()  # top-level groups named only by id
