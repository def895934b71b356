"""Parsing of contact API bodies into the domain's commands; every bad field is named in one 400."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from stitcher.domain.commands import ContactCommand, GroupId, SubscribeCommand
from stitcher.domain.errors import FieldErrors, InvalidIdentifier, ValidationFailed
from stitcher.domain.identifiers import (
    IdentifierKind,
    Identity,
    IdentityReading,
    Ignored,
    Normaliser,
    as_list,
    read_identity,
)
from tracker.visitor import parse_visitor_id

_PROFILE = {"firstName": ("first_name", 256), "lastName": ("last_name", 256),
            "languageCode": ("language_code", 16)}
MAX_VISITORS = 100
MAX_GROUPS = 100
MAX_DEVICE = 4096  # characters of a channel's device (a string, or an object as JSON): its column's width


def parse_contact(payload: Any, normaliser: Normaliser, *, contact_id: int | None = None,
                  prefix: str = "") -> ContactCommand:
    """Validate an eSputnik contact payload plus Stitcher's ``visitorIds``.

    Read the way the platform's clients send it: a single object where a list belongs is a one-element
    list; blank and placeholder identifiers are ignored and listed in ``ignored``; ``viber``/``telegram``
    channels are stored only; a ``device`` object is kept as JSON; ``groups`` (names or ``{id?, name,
    type?}``) put the contact in those groups; fields we do not model (``addressBookId``, ``contactKey``,
    ``timeZone`` …) are left unread. 400 only for malformed values and when nothing identifies the person.
    """
    errors = FieldErrors()
    if not isinstance(payload, Mapping):
        raise ValidationFailed([{"field": prefix.rstrip(".") or "body", "message": "must be a JSON object"}])
    reading = IdentityReading(Identity())
    try:
        reading = read_identity(payload, normaliser, contact_id=contact_id, field_prefix=prefix)
    except ValidationFailed as exc:
        errors.extend(exc)
    ignored = list(reading.ignored)
    devices = _devices(as_list(payload.get("channels")), normaliser, prefix, ignored)
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
        fields = as_list(payload["fields"])
        if fields is not None and (not isinstance(fields, list) or not all(
                isinstance(f, Mapping) and "id" in f for f in fields)):
            errors.add(prefix + "fields", "must be a list of {id, value} objects")
        else:
            profile["custom_fields"] = fields
    visitor_ids = _visitor_ids(payload.get("visitorIds"), prefix, errors)
    groups, group_ids = parse_groups(payload.get("groups"), prefix + "groups", errors, ignored)
    identity = reading.identity
    if contact_id is None and not errors.items and identity.external_id is None and not identity.channels \
            and identity.contact_id is None:
        for item in reading.ignored:  # say why: what was sent was ignored
            errors.add(item["field"], f"is {item['reason']}, so it was ignored, and nothing else identifies the "
                                      "contact")
        if not reading.ignored:
            errors.add(prefix + "channels", "a contact needs an externalCustomerId or at least one email, sms, "
                                            "mobilepush or webpush channel")
    errors.raise_if_any()
    return ContactCommand(identity, devices, profile, visitor_ids, groups=groups,
                          stored_only=reading.stored_only, ignored=tuple(ignored), group_ids=group_ids)


def _devices(channels: Any, normaliser: Normaliser, prefix: str,
             ignored: list[Ignored]) -> dict[tuple[IdentifierKind, str], str | None]:
    """Each channel's ``device``: a string, or an object (``{appId, deviceModel, os, locale, appVersion}`` on
    push channels) kept as compact JSON, either whole up to ``MAX_DEVICE`` characters. A longer one, or
    another type, is ignored and listed (the channel is still stored); bad channels themselves are reported
    by ``read_identity``."""
    devices: dict[tuple[IdentifierKind, str], str | None] = {}
    for i, item in enumerate(channels if isinstance(channels, list) else []):
        if not isinstance(item, Mapping) or item.get("device") is None:
            continue
        where = f"{prefix}channels[{i}].device"
        device = item["device"]
        if isinstance(device, Mapping):
            device = json.dumps(device, ensure_ascii=False, separators=(",", ":"))
        elif not isinstance(device, str):
            ignored.append({"field": where, "reason": "neither a string nor an object"})
            continue
        if len(device) > MAX_DEVICE:
            ignored.append({"field": where, "reason": f"longer than {MAX_DEVICE} characters"
                                                      + (" as JSON" if isinstance(item["device"], Mapping) else "")})
            continue
        try:
            kind = IdentifierKind(str(item.get("type", "")).strip().lower())
            if normaliser.absence(item.get("value")) is None:
                devices[(kind, normaliser.channel(kind, item.get("value"), "-"))] = device
        except (ValueError, InvalidIdentifier):
            pass  # already reported by read_identity
    return devices


def parse_groups(raw: Any, where: str, errors: FieldErrors,
                 ignored: list[Ignored]) -> tuple[tuple[str, ...], tuple[GroupId, ...]]:
    """Group names from names or ``{"id"?, "name", "type"?}`` objects, or one such object alone, and the
    groups named by an id alone (``{"id": 7}``), which the caller resolves (``group_refs``).

    Groups are found (and created) by name; an object without a usable name is taken by its id when that is
    a positive integer (or its digits), else ignored and listed, as is a blank name; a name that is not a
    string of 1-256 characters is an error.
    """
    raw = as_list(raw)
    if raw is None:
        return (), ()
    if not isinstance(raw, list) or len(raw) > MAX_GROUPS:
        errors.add(where, f"must be a list of at most {MAX_GROUPS} group names or {{name}} objects")
        return (), ()
    names: list[str] = []
    ids: list[GroupId] = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        name = item.get("name") if isinstance(item, Mapping) else item
        if isinstance(item, Mapping) and (name is None or (isinstance(name, str) and not name.strip())):
            if item.get("id") is None:
                ignored.append({"field": at + ".name", "reason": "blank" if name is not None else "missing"})
            elif (group_id := _group_id(item["id"])) is None:
                ignored.append({"field": at + ".id", "reason": "not a group id"})
            else:
                ids.append((group_id, at + ".id"))
            continue
        if isinstance(item, Mapping):
            at += ".name"
        if name is None or (isinstance(name, str) and not name.strip()):
            ignored.append({"field": at, "reason": "blank" if name is not None else "missing"})
        elif not isinstance(name, str) or len(name) > 256:
            errors.add(at, "must be a group name of 1-256 characters")
        else:
            names.append(name.strip())
    return tuple(dict.fromkeys(names)), tuple(dict.fromkeys(ids))


def _group_id(value: Any) -> int | None:
    text = str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or not 0 < int(text) < 2**63:
        return None
    return int(text)


def _visitor_ids(raw: Any, prefix: str, errors: FieldErrors) -> tuple[str, ...]:
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
    """``{contact: {...}, groups: [...], formType}``; groups and formType are optional.

    The top-level ``groups`` take the same shapes as the contact's own (names, objects, a single object);
    the command's groups are the top-level ones, the contact's stay on the contact command.
    """
    if not isinstance(payload, Mapping):
        raise ValidationFailed([{"field": "body", "message": "must be a JSON object"}])
    errors = FieldErrors()
    contact: ContactCommand | None = None
    try:
        contact = parse_contact(payload.get("contact"), normaliser, prefix="contact.")
    except ValidationFailed as exc:
        errors.extend(exc)
    ignored: list[Ignored] = []
    groups, group_ids = parse_groups(payload.get("groups"), "groups", errors, ignored)
    form_type = payload.get("formType")
    if form_type is not None and (not isinstance(form_type, str) or len(form_type) > 128):
        errors.add("formType", "must be a string of at most 128 characters")
    errors.raise_if_any()
    assert contact is not None
    if ignored:
        contact = replace(contact, ignored=(*contact.ignored, *ignored))
    return SubscribeCommand(contact, groups, form_type, group_ids)
