"""An import's rows parsed: the contact API's own parser on each row, with the keys the row is matched on
and the identity keys it touches. Loads no store (no SQLAlchemy): it is what the import's parser process
runs (``ImportRunner._parse``), and a parser process starts in a fraction of the service's start-up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stitcher.domain.commands import ContactCommand
from stitcher.domain.errors import ValidationFailed
from stitcher.domain.identifiers import Normaliser
from stitcher.domain.keys import of_request
from stitcher.domain.rules import DedupeOn, ImportRow, dedupe_keys
from stitcher.imports.request import ImportRequest
from stitcher.payload import parse_contact


@dataclass
class Parsed:
    """Rows ``[start, end)`` after parsing: the good ones (index, command, row, the identity keys it touches —
    worked out where it is parsed, in the parser process when there is one) and the bad ones (index, error)."""

    start: int
    end: int
    good: list[tuple[int, ContactCommand, ImportRow, frozenset[str]]] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)

    def lock_keys(self, import_id: str) -> set[str]:
        """Every identity key the chunk touches, and the import's own key (one runner per chunk)."""
        return {f"import:{import_id}"}.union(*(keys for *_, keys in self.good))

    def split(self, max_keys: int) -> list[Parsed]:
        """Consecutive parts, each locking at most ``max_keys`` identity keys (a row with more is a part of
        its own): PostgreSQL keeps every lock of every transaction in one shared table of fixed size
        (``max_locks_per_transaction`` times connections, 6,400 by default)."""
        parts = [Parsed(self.start, self.start)]
        keys = 0
        bad = dict(self.bad)
        good = {g[0]: g for g in self.good}
        for index in range(self.start, self.end):
            n = len(good[index][3]) if index in good else 0
            if keys + n > max_keys and keys:
                parts.append(Parsed(index, index))
                keys = 0
            part = parts[-1]
            part.end = index + 1
            keys += n
            if index in good:
                part.good.append(good[index])
            else:
                part.bad.append((index, bad[index]))
        return parts


def parse_rows(request: ImportRequest, start: int, end: int, normaliser: Normaliser) -> Parsed:
    """Parse rows ``[start, end)`` with the contact API's own parser; a bad row is kept with its error."""
    return parse_slice(request.contacts[start:end], start, request.dedupe_on, request.field_id, normaliser)


def parse_slice(contacts: Sequence[Any], start: int, dedupe_on: DedupeOn, field_id: str | None,
                normaliser: Normaliser) -> Parsed:
    """``parse_rows`` of the rows given, the first being row ``start``: what a parser process is sent (the
    chunk's rows, not the whole request)."""
    out = Parsed(start, start + len(contacts))
    for index, raw in enumerate(contacts, start):
        try:
            command = parse_contact(raw, normaliser)
            field_value = _field_value(raw, field_id) if dedupe_on is DedupeOn.FIELD else None
        except ValidationFailed as exc:
            out.bad.append((index, exc.message))
            continue
        keys = dedupe_keys(dedupe_on, command.identity, field_id, field_value)
        out.good.append((index, command, ImportRow(command.identity, keys),
                         frozenset((*of_request(command.identity, ()), *keys))))
    return out


def _field_value(raw: Mapping[str, Any], field_id: str | None) -> str | None:
    for item in raw.get("fields") or ():
        if str(item.get("id")) == field_id:
            value = item.get("value")
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise ValidationFailed([{"field": "fields", "message": f"field {field_id} must be text or an "
                                                                        "integer to dedupe on"}])
            return str(value)
    return None
