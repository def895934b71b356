"""Parsing of contact API bodies into the domain's commands; every bad field is named in one 400."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stitcher.domain.commands import ContactCommand, SubscribeCommand
from stitcher.domain.errors import InvalidIdentifier, ValidationFailed
from stitcher.domain.identifiers import IdentifierKind, Identity, Normaliser, parse_identity
from tracker.visitor import parse_visitor_id

_PROFILE = {"firstName": ("first_name", 256), "lastName": ("last_name", 256),
            "languageCode": ("language_code", 16)}
MAX_VISITORS = 100
MAX_GROUPS = 100


@dataclass
class _Errors:
    items: list[dict[str, str]] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.items.append({"field": where, "message": message})

    def raise_if_any(self) -> None:
        if self.items:
            raise ValidationFailed(self.items)


def parse_contact(payload: Any, normaliser: Normaliser, *, contact_id: int | None = None,
                  prefix: str = "") -> ContactCommand:
    """Validate an eSputnik contact payload plus Stitcher's ``visitorIds``."""
    errors = _Errors()
    if not isinstance(payload, Mapping):
        raise ValidationFailed([{"field": prefix.rstrip(".") or "body", "message": "must be a JSON object"}])
    identity = Identity()
    try:
        identity = parse_identity(payload, normaliser, contact_id=contact_id, field_prefix=prefix)
    except ValidationFailed as exc:
        errors.items.extend(exc.errors)
    devices: dict[tuple[IdentifierKind, str], str | None] = {}
    channels = payload.get("channels")
    for item in channels if isinstance(channels, list) else []:
        if isinstance(item, Mapping) and isinstance(item.get("device"), str):
            try:
                kind = IdentifierKind(str(item.get("type", "")).strip().lower())
                devices[(kind, normaliser.channel(kind, item.get("value"), "-"))] = item["device"][:256]
            except (ValueError, InvalidIdentifier):
                pass  # already reported by parse_identity
    profile: dict[str, Any] = {}
    for key, (attr, limit) in _PROFILE.items():
        if key in payload:
            value = payload[key]
            if value is not None and (not isinstance(value, str) or len(value) > limit):
                errors.add(prefix + key, f"must be a string of at most {limit} characters")
            else:
                profile[attr] = value.strip() if isinstance(value, str) else None
    if "address" in payload:
        if payload["address"] is not None and not isinstance(payload["address"], Mapping):
            errors.add(prefix + "address", "must be an object")
        else:
            profile["address"] = payload["address"]
    if "fields" in payload:
        fields = payload["fields"]
        if fields is not None and (not isinstance(fields, list) or not all(
                isinstance(f, Mapping) and "id" in f for f in fields)):
            errors.add(prefix + "fields", "must be a list of {id, value} objects")
        else:
            profile["custom_fields"] = fields
    visitor_ids = _visitor_ids(payload.get("visitorIds"), prefix, errors)
    if contact_id is None and not errors.items and identity.external_id is None and not identity.channels \
            and identity.contact_id is None:
        errors.add(prefix + "channels", "a contact needs an externalCustomerId or at least one channel")
    errors.raise_if_any()
    return ContactCommand(identity, devices, profile, visitor_ids)


def _visitor_ids(raw: Any, prefix: str, errors: _Errors) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_VISITORS:
        errors.add(prefix + "visitorIds", f"must be a list of at most {MAX_VISITORS} visitor ids")
        return ()
    out = []
    for i, value in enumerate(raw):
        vid = parse_visitor_id(value)
        if vid is None:
            errors.add(f"{prefix}visitorIds[{i}]", "must be a visitor id (UUID) from the tracker cookie")
        else:
            out.append(vid)
    return tuple(dict.fromkeys(out))


def parse_subscribe(payload: Any, normaliser: Normaliser) -> SubscribeCommand:
    """``{contact: {...}, groups: [...], formType}``; groups and formType are optional."""
    if not isinstance(payload, Mapping):
        raise ValidationFailed([{"field": "body", "message": "must be a JSON object"}])
    errors = _Errors()
    contact: ContactCommand | None = None
    try:
        contact = parse_contact(payload.get("contact"), normaliser, prefix="contact.")
    except ValidationFailed as exc:
        errors.items.extend(exc.errors)
    groups: list[str] = []
    raw_groups = payload.get("groups")
    if raw_groups is not None:
        if not isinstance(raw_groups, list) or len(raw_groups) > MAX_GROUPS:
            errors.add("groups", f"must be a list of at most {MAX_GROUPS} group names")
        else:
            for i, name in enumerate(raw_groups):
                if not isinstance(name, str) or not name.strip() or len(name) > 256:
                    errors.add(f"groups[{i}]", "must be a group name of 1-256 characters")
                else:
                    groups.append(name.strip())
    form_type = payload.get("formType")
    if form_type is not None and (not isinstance(form_type, str) or len(form_type) > 128):
        errors.add("formType", "must be a string of at most 128 characters")
    errors.raise_if_any()
    assert contact is not None
    return SubscribeCommand(contact, tuple(dict.fromkeys(groups)), form_type)
