"""The commands the identity services take: what one call asks for, validated and normalised.

The HTTP layer (``stitcher.payload``) parses request bodies into these; bulk import, events, orders and
smartsend will build the same commands from their rows, so one set of rules serves them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stitcher.domain.identifiers import IdentifierKind, Identity

__all__ = ["ContactCommand", "SubscribeCommand"]


@dataclass(frozen=True)
class ContactCommand:
    """Add/update one contact: who (identity), its channels' devices, the profile fields to set and the
    visitors whose anonymous history belongs to it."""

    identity: Identity
    devices: Mapping[tuple[IdentifierKind, str], str | None]
    profile: Mapping[str, Any]  # Contact attributes to set (only those the caller gave)
    visitor_ids: tuple[str, ...] = ()

    def channels(self) -> list[tuple[IdentifierKind, str, str | None]]:
        """The identity's channels with their devices, in request order."""
        return [(k, v, self.devices.get((k, v))) for k, v in self.identity.channels]


@dataclass(frozen=True)
class SubscribeCommand:
    """Subscribe one contact, optionally into named groups, from a form."""

    contact: ContactCommand
    groups: tuple[str, ...] = ()
    form_type: str | None = None
