"""The body of ``POST /api/v1/contacts``: its options checked at once (a 400 naming each bad one); the rows
themselves are parsed one by one while the import runs, so that a bad row fails alone."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stitcher.domain.errors import FieldErrors, ValidationFailed
from stitcher.domain.rules import DedupeOn

MAX_ROWS = 3000
MAX_GROUPS = 100
# contactFields names → the profile attributes they let an import write on a contact that existed before it
PROFILE_FIELDS = {"firstName": "first_name", "lastName": "last_name", "languageCode": "language_code",
                  "address": "address", "fields": "custom_fields"}
# accepted in contactFields as platform clients send them; channels are identifiers and always added
CHANNEL_FIELDS = frozenset({"email", "sms", "mobilepush", "webpush", "externalCustomerId"})


@dataclass(frozen=True)
class ImportRequest:
    """An import's rows (as sent) and options; ``contact_fields`` None means every field."""

    contacts: list[Any]
    dedupe_on: DedupeOn
    field_id: str | None = None
    contact_fields: frozenset[str] | None = None  # profile attributes
    group_names: tuple[str, ...] = ()
    restore_deleted: bool = False

    def stored(self) -> dict[str, Any]:
        """The form kept in SQL until the import ends (``from_stored`` reads it back on a restart)."""
        return {"contacts": self.contacts, "dedupeOn": self.dedupe_on.value, "fieldId": self.field_id,
                "contactFields": sorted(self.contact_fields) if self.contact_fields is not None else None,
                "groupNames": list(self.group_names), "restoreDeleted": self.restore_deleted}

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> ImportRequest:
        fields = data.get("contactFields")
        return cls(list(data["contacts"]), DedupeOn(data["dedupeOn"]), data.get("fieldId"),
                   frozenset(fields) if fields is not None else None, tuple(data.get("groupNames") or ()),
                   bool(data.get("restoreDeleted")))


def parse_import(body: Any) -> ImportRequest:
    """``{contacts: [...], dedupeOn, fieldId?, contactFields?, groupNames?, restoreDeleted?}``."""
    if not isinstance(body, Mapping):
        raise ValidationFailed([{"field": "body", "message": "must be a JSON object"}])
    errors = FieldErrors()
    bad = errors.add

    contacts = body.get("contacts")
    if not isinstance(contacts, list) or not 1 <= len(contacts) <= MAX_ROWS:
        bad("contacts", f"must be a list of 1 to {MAX_ROWS} contacts")
        contacts = []
    dedupe_on = None
    raw = body.get("dedupeOn")
    try:
        dedupe_on = DedupeOn(raw) if isinstance(raw, str) else None
    except ValueError:
        pass
    if dedupe_on is None:
        bad("dedupeOn", f"must be one of {', '.join(d.value for d in DedupeOn)}")
    field_id: str | None = None
    if dedupe_on is DedupeOn.FIELD:
        raw_id = body.get("fieldId")
        if isinstance(raw_id, int) and not isinstance(raw_id, bool):
            raw_id = str(raw_id)
        if not isinstance(raw_id, str) or not 0 < len(raw_id.strip()) <= 64:
            bad("fieldId", "must be the id of a custom field (1-64 characters) when dedupeOn is fieldId")
        else:
            field_id = raw_id.strip()
    contact_fields = _contact_fields(body.get("contactFields"), bad)
    groups = body.get("groupNames")
    names: list[str] = []
    if groups is not None:
        if not isinstance(groups, list) or len(groups) > MAX_GROUPS:
            bad("groupNames", f"must be a list of at most {MAX_GROUPS} group names")
        else:
            for i, name in enumerate(groups):
                if not isinstance(name, str) or not name.strip() or len(name) > 256:
                    bad(f"groupNames[{i}]", "must be a group name of 1-256 characters")
                else:
                    names.append(name.strip())
    restore = body.get("restoreDeleted", False)
    if not isinstance(restore, bool):
        bad("restoreDeleted", "must be true or false")
    errors.raise_if_any()
    assert dedupe_on is not None
    return ImportRequest(contacts, dedupe_on, field_id, contact_fields, tuple(dict.fromkeys(names)), restore)


def _contact_fields(raw: Any, bad: Any) -> frozenset[str] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > 64:
        bad("contactFields", "must be a list of field names")
        return None
    attrs: set[str] = set()
    for i, name in enumerate(raw):
        if isinstance(name, str) and name in PROFILE_FIELDS:
            attrs.add(PROFILE_FIELDS[name])
        elif not (isinstance(name, str) and name in CHANNEL_FIELDS):
            known = ", ".join([*PROFILE_FIELDS, *sorted(CHANNEL_FIELDS)])
            bad(f"contactFields[{i}]", f"must be one of {known}")
    return frozenset(attrs)
