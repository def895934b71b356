"""Parsing of an event body (``{eventTypeKey, keyValue, params: [{name, value}]}``) into an ``EventCommand``;
every bad field is named in one 400."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stitcher.domain.errors import FieldErrors, ValidationFailed
from stitcher.domain.identifiers import Identity, Normaliser
from stitcher.domain.instants import BadInstant, read_instant
from stitcher.domain.rules import event_identity

MAX_EVENT_BYTES = 20 * 1024  # the platform's limit of an event's content (413 past it)
MAX_TYPE_KEY = 100  # the platform's limit of eventTypeKey
MAX_KEY_VALUE = 1024
MAX_PARAM_NAME = 256
MAX_IDEMPOTENCY_KEY = 256
EVENT_ID_PARAM = "eventid"  # a param that makes a resend a no-op, like the Idempotency-Key header
OCCURRED = "occurred"  # when the event happened: the platform's field of an event's time (its past events)
MAX_CLOCK_SKEW_MS = 5 * 60_000  # how far ahead of this service's clock a sender's clock may be


@dataclass(frozen=True)
class EventCommand:
    """One API event, validated: its type, who it names, what it carries, and its idempotent id."""

    event_id: str  # "api:" + a digest of the Idempotency-Key (or eventId param), else a random one
    type: str
    identity: Identity
    data: dict[str, Any]  # {"keyValue", "params"}: what goes on the timeline as the event's data
    keyed: bool = False  # an Idempotency-Key or eventId was given: a resend may come
    occurred_ms: int | None = None  # when it happened, if the sender said (``occurred``); else its receipt


def event_id(key: str | None) -> str:
    """The timeline id of an event: the same for every resend with this key, a fresh one without a key."""
    if key is None:
        return f"api:{uuid.uuid4().hex}"
    return "api:" + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def parse_event(payload: Any, normaliser: Normaliser, idempotency_key: str | None = None, *,
                now_ms: int | None = None) -> EventCommand:
    """Validate an event body; ``idempotency_key`` is the ``Idempotency-Key`` header, which wins over an
    ``eventId`` param. ``params`` given as one object is read as a one-element list. ``occurred`` (ISO 8601,
    or seconds since 1970) is when the event happened: from 1970 to at most ``MAX_CLOCK_SKEW_MS`` past
    ``now_ms`` (this service's clock)."""
    if not isinstance(payload, Mapping):
        raise ValidationFailed([{"field": "body", "message": "must be a JSON object"}])
    errors = FieldErrors()
    type_key = payload.get("eventTypeKey")
    if not isinstance(type_key, str) or not type_key.strip() or len(type_key.strip()) > MAX_TYPE_KEY \
            or not type_key.strip().isprintable():
        errors.add("eventTypeKey", f"must be a string of 1-{MAX_TYPE_KEY} printable characters")
    key_value = payload.get("keyValue")
    if key_value is not None and (isinstance(key_value, bool) or not isinstance(key_value, str | int)
                                  or len(str(key_value)) > MAX_KEY_VALUE):
        errors.add("keyValue", f"must be a string of at most {MAX_KEY_VALUE} characters")
        key_value = None
    occurred: int | None = None
    if payload.get(OCCURRED) is not None:
        latest = (now_ms if now_ms is not None else int(time.time() * 1000)) + MAX_CLOCK_SKEW_MS
        try:
            occurred = read_instant(payload[OCCURRED], epoch=True, latest_ms=latest)
        except BadInstant as exc:
            errors.add(OCCURRED, str(exc))
    raw_params = payload.get("params")
    if raw_params is None:
        raw_params = []
    elif isinstance(raw_params, Mapping):
        raw_params = [raw_params]
    if not isinstance(raw_params, list):
        errors.add("params", "must be a list of {name, value} objects")
        raw_params = []
    params: list[tuple[str, Any]] = []
    for i, item in enumerate(raw_params):
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(item, Mapping):
            errors.add(f"params[{i}]", "must be an object {name, value}")
        elif not isinstance(name, str) or not name.strip() or len(name) > MAX_PARAM_NAME:
            errors.add(f"params[{i}].name", f"must be a string of 1-{MAX_PARAM_NAME} characters")
        # one entry per body item, so the rules name params by the body's index; a bad one names nobody
        params.append((name, item.get("value")) if isinstance(name, str) and isinstance(item, Mapping)
                      else ("", None))
    key = idempotency_key
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isascii() and key.isprintable()):
        errors.add("Idempotency-Key", f"must be 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters")
    for i, (name, value) in enumerate(params):
        if key is None and name.strip().lower() == EVENT_ID_PARAM and value is not None:
            text = str(value).strip() if isinstance(value, str | int) and not isinstance(value, bool) else ""
            if not 0 < len(text) <= MAX_IDEMPOTENCY_KEY:
                errors.add(f"params[{i}].value", f"an eventId must be a string of 1-{MAX_IDEMPOTENCY_KEY} characters")
            else:
                key = text
    identity = Identity()
    try:
        identity = event_identity(params, key_value, normaliser)
    except ValidationFailed as exc:
        errors.extend(exc)
    errors.raise_if_any()
    data = {"keyValue": key_value, "params": [dict(item) for item in raw_params]}
    assert isinstance(type_key, str)
    return EventCommand(event_id(key), type_key.strip(), identity, data, keyed=key is not None,
                        occurred_ms=occurred)
