"""Validation of beacon bodies (SPEC §2). Pure: bytes and limits in, accepted and rejected events out."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

import orjson

from tracker.errors import PayloadTooLarge, ValidationFailed
from tracker.limits import MAX_JSON_DEPTH, deeper_than
from tracker.visitor import parse_visitor_id

_EVENT_ID = re.compile(r"[A-Za-z0-9_\-:.]{1,64}")  # used with fullmatch: "$" would let a "\n" through
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MIN_MS = 946_684_800_000  # 2000-01-01: anything earlier is a clock or unit bug
_MAX_MS = 4_102_444_800_000  # 2100-01-01
_TEXT_FIELDS = ("url", "ref", "title")
_NUMBERS = (int, float)
_TOO_DEEP = f"nested deeper than {MAX_JSON_DEPTH} levels"


@dataclass(frozen=True)
class Limits:
    """The configurable size limits of one beacon."""

    max_body_bytes: int = 64 * 1024
    max_events: int = 100
    max_string_bytes: int = 2 * 1024
    max_props_bytes: int = 8 * 1024


class Batch:
    """A validated beacon: the body's visitor id and the events split into good and bad.

    A plain slotted class: a dataclass's generated ``__init__`` with its two list factories cost ~4k
    instructions a beacon."""

    __slots__ = ("accepted", "rejected", "reset", "vid")

    def __init__(self, vid: str | None, reset: bool) -> None:
        self.vid = vid
        self.reset = reset
        self.accepted: list[tuple[str, bytes]] = []  # (event id, stored JSON)
        self.rejected: list[dict[str, Any]] = []  # {"index", "id"?, "reason", "event"}


def decode_pixel(d: str | None) -> bytes:
    """The JSON body carried by ``/t.gif?d=``: base64url, padding optional."""
    if not d:
        raise ValidationFailed([{"field": "d", "message": "missing base64url JSON body"}])
    try:
        return base64.b64decode(d + "=" * (-len(d) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationFailed([{"field": "d", "message": "not valid base64url"}]) from exc


def parse_batch(raw: bytes, limits: Limits, received_at: int, bot: bool = False) -> Batch:
    """Validate a whole beacon body.

    A malformed body raises (400/413, nothing is stored). Otherwise each event is judged alone: good ones
    become compact JSON with ``rt`` (received_at) and ``t`` (the derived time that orders the history),
    bad ones come back with their reason. Duplicate keys are not looked for (orjson keeps the last value).

    Nesting: ``props`` deeper than ``MAX_JSON_DEPTH`` levels is a bad event; the body's own structure (the
    events list, an event's other fields) nesting past it is a malformed body. That is only looked at for an
    event already judged bad, since a good event's other fields are scalars (unknown fields are ignored).
    """
    if len(raw) > limits.max_body_bytes:
        raise PayloadTooLarge(f"body is {len(raw)} bytes, the limit is {limits.max_body_bytes}")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed([{"field": "body", "message": f"not valid JSON: {exc.msg}"}]) from exc
    if not isinstance(body, dict):
        raise ValidationFailed([{"field": "body", "message": "must be a JSON object"}])
    errors: list[dict[str, str]] = []
    vid = None
    if body.get("vid") is not None:
        vid = parse_visitor_id(body["vid"])
        if vid is None:
            errors.append({"field": "vid", "message": "must be a visitor id (UUID) issued by the collector"})
    sent_at = body.get("sent_at")
    if sent_at is not None and not _is_ms(sent_at):
        errors.append({"field": "sent_at", "message": "must be a Unix time in milliseconds"})
        sent_at = None
    events = body.get("events")
    if not isinstance(events, list) or not events:
        errors.append({"field": "events", "message": "must be a non-empty list"})
    if errors:
        raise ValidationFailed(errors)
    assert isinstance(events, list)
    if len(events) > limits.max_events:
        raise PayloadTooLarge(f"{len(events)} events in one request, the limit is {limits.max_events}",
                              field="events")
    batch = Batch(vid=vid, reset=body.get("reset") is True)
    seen: set[str] = set()
    for index, event in enumerate(events):
        try:
            event_id, stored = _event(event, limits, received_at, sent_at, bot)
        except ValueError as exc:
            if _structure_too_deep(event):
                raise ValidationFailed([{"field": f"events[{index}]", "message": _TOO_DEEP}]) from None
            batch.rejected.append(_rejection(index, event, str(exc)))
            continue
        if event_id not in seen:  # the same id twice in one batch is one event
            seen.add(event_id)
            batch.accepted.append((event_id, stored))
    return batch


def _is_ms(value: object) -> bool:
    # a class test, not isinstance: a bool is not a time, and parsed JSON holds exact ints and floats
    return value.__class__ in _NUMBERS and _MIN_MS <= value <= _MAX_MS


def _event(event: object, limits: Limits, received_at: int, sent_at: Any, bot: bool) -> tuple[str, bytes]:
    if not isinstance(event, dict):
        raise ValueError("event must be a JSON object")
    event_id = event.get("id")
    if not isinstance(event_id, str) or not _EVENT_ID.fullmatch(event_id):
        raise ValueError("id: must be 1-64 characters of letters, digits, '-', '_', ':' or '.'")
    kind = event.get("type")
    if not isinstance(kind, str) or len(kind) > 128 or not kind.strip() or _CONTROL.search(kind):
        raise ValueError("type: must be a non-empty name of at most 128 printable characters")
    out: dict[str, Any] = {"id": event_id, "type": kind}
    ts = event.get("ts")
    if ts is not None:
        if not _is_ms(ts):
            raise ValueError("ts: must be a Unix time in milliseconds")
        out["ts"] = int(ts)
    max_string = limits.max_string_bytes
    for name in _TEXT_FIELDS:
        value = event.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(f"{name}: must be a string")
        # a character is at most 4 bytes of UTF-8: most strings need no encoding to be measured
        if len(value) * 4 > max_string and len(value.encode()) > max_string:
            raise ValueError(f"{name}: longer than {max_string} bytes")
        out[name] = value
    props = event.get("props")
    if props is not None:
        if not isinstance(props, dict):
            raise ValueError("props: must be a JSON object")
        if props:
            try:
                encoded = orjson.dumps(props)
            except orjson.JSONEncodeError:  # orjson encodes ~255 levels at most
                raise ValueError(f"props: {_TOO_DEEP}") from None
            size = len(encoded)
            # nesting needs as many brackets as levels: counting them (in C) spares the usual props a walk
            if encoded.count(b"{") + encoded.count(b"[") > MAX_JSON_DEPTH and deeper_than(props, MAX_JSON_DEPTH):
                raise ValueError(f"props: {_TOO_DEEP}")
            if size > limits.max_props_bytes:
                raise ValueError(f"props: larger than {limits.max_props_bytes} bytes")
            if size > max_string:  # else no value in it can be longer
                for key, value in props.items():
                    if isinstance(value, str) and len(value.encode()) > max_string:
                        raise ValueError(f"props.{key}: longer than {max_string} bytes")
            out["props"] = props
    out["rt"] = received_at
    out["t"] = derived_time(received_at, sent_at, ts)
    if bot:
        out["bot"] = True
    stored = orjson.dumps(out)
    if b"\\u0000" in stored:  # PostgreSQL text and jsonb cannot hold NUL; which field is it?
        _reject_nul(out)
    return event_id, stored


def _reject_nul(out: dict[str, Any]) -> None:
    """Raise naming the first field holding a NUL character (the escaped form in the JSON may also be a
    literal backslash followed by ``u0000``, which is fine)."""
    for name in _TEXT_FIELDS:
        if "\x00" in out.get(name, ""):
            raise ValueError(f"{name}: contains a NUL character")
    if _has_nul(out.get("props")):
        raise ValueError("props: contains a NUL character")


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in k or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def derived_time(received_at: int, sent_at: Any, ts: Any) -> int:
    """Server time wins: ``received_at - (sent_at - ts)``, never later than ``received_at``.

    The client's clock only contributes the *offset* between the event and the send, so a browser whose
    clock is hours off still orders its events correctly against the server's.
    """
    if sent_at is None or ts is None:
        return received_at
    return int(received_at - max(0, sent_at - ts))


def _structure_too_deep(event: object) -> bool:
    """Whether an event, its props left out (they are judged on their own), nests past the body's limit:
    the event is the body's third level (body, events, event)."""
    if isinstance(event, dict):
        event = {k: v for k, v in event.items() if k != "props"}
    return isinstance(event, dict | list) and deeper_than(event, MAX_JSON_DEPTH - 2)


def _rejection(index: int, event: object, reason: str) -> dict[str, Any]:
    record: dict[str, Any] = {"index": index, "reason": reason}
    if isinstance(event, dict):
        if isinstance(event.get("id"), str):
            record["id"] = event["id"][:64]
        props = event.get("props")
        if isinstance(props, dict | list) and deeper_than(props, MAX_JSON_DEPTH):
            event = {**event, "props": f"({_TOO_DEEP})"}  # orjson may not encode them
    # keep what was sent, bounded, so an operator can see it
    record["event"] = orjson.dumps(event)[:4096].decode(errors="replace")
    return record
