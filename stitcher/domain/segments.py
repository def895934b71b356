"""Groups and the conditions of a dynamic group (a segment), checked as data: no SQL, no I/O.

A dynamic group is ``{field, op, value?}`` conditions joined by ``match`` (``all`` or ``any``); the store turns
the parsed conditions into one SQL filter (``stitcher.store.segments``), so a dynamic group is evaluated when
it is read and new contacts fall in by themselves. Each field takes the ops that make sense for it; anything
else is a 400 naming the condition and what is wrong with it.

Channel values are read as the identifier rules store them (``Normaliser``): ``equals``/``not_equals`` an
email, phone or push token normalise the value as a contact's channel would be (a value no contact could
have is a 400 saying why); ``contains`` a phone keeps the digits and ``+`` (``"777 123"`` finds
``+420777123456``), ``contains`` an email is trimmed and lower-cased.

A custom field's value is any JSON a contact was given; a condition compares it by one rule on both
backends (``custom_readings``): the condition's value (a string, ``true``/``false`` or a number) is read as
a text, and also as a boolean when it is ``true``/``false`` (or the strings ``"true"``/``"false"``) and as a
number when it is one (or a string in JSON number syntax, ``"1"``, ``"-2.5"``). A stored string equals the
text exactly, a stored boolean the boolean, a stored number the number (compared as a double); objects,
arrays and null equal nothing. ``contains`` searches stored strings only.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from stitcher.domain.errors import FieldErrors, InvalidIdentifier
from stitcher.domain.identifiers import IdentifierKind, Normaliser
from stitcher.domain.instants import BadInstant, read_instant

__all__ = ["DAY_MS", "FIELDS", "OPS", "Condition", "FieldKind", "GroupSpec", "GroupType", "Match", "Op",
           "custom_readings", "parse_condition", "parse_group"]

MAX_NAME = 256
MAX_CONDITIONS = 50
MAX_TEXT = 1024  # a value compared with a text: longer than any stored text (ids 256, channels 1024)
MAX_EVENT_TYPE = 128  # timeline.type
MAX_DAYS = 36_500
DAY_MS = 86_400_000
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_PLAIN = Normaliser()  # no default phone region: the service hands in its own


class GroupType(StrEnum):
    STATIC = "static"
    DYNAMIC = "dynamic"


class Match(StrEnum):
    ALL = "all"
    ANY = "any"


class Op(StrEnum):
    IS_SET = "is_set"
    NOT_SET = "not_set"
    EQUALS = "equals"
    NOT_EQUALS = "not_equals"
    CONTAINS = "contains"
    BEFORE = "before"
    AFTER = "after"
    WITHIN_DAYS = "within_days"


class FieldKind(StrEnum):
    """How a field is stored, which decides its ops and how the store evaluates it."""

    PROFILE = "profile"  # a text column of the contact
    CHANNEL = "channel"  # an identifier of the contact (email, sms, mobilepush)
    TIME = "time"  # a time column of the contact (Unix ms)
    CUSTOM = "custom"  # a custom field id in the contact's ``fields``
    GROUP = "group"  # member of a static group (value: its id)
    EVENT = "event"  # has a timeline event of a type (value: the type, or {type, days})
    VISITOR = "visitor"  # has an open link to a web visitor


_TEXT_OPS = frozenset({Op.IS_SET, Op.NOT_SET, Op.EQUALS, Op.NOT_EQUALS, Op.CONTAINS})
OPS: Mapping[FieldKind, frozenset[Op]] = {
    FieldKind.PROFILE: _TEXT_OPS,
    FieldKind.CHANNEL: _TEXT_OPS,
    FieldKind.CUSTOM: _TEXT_OPS,
    FieldKind.TIME: frozenset({Op.BEFORE, Op.AFTER, Op.WITHIN_DAYS}),
    FieldKind.GROUP: frozenset({Op.EQUALS, Op.NOT_EQUALS}),
    FieldKind.EVENT: frozenset({Op.IS_SET, Op.NOT_SET, Op.EQUALS, Op.NOT_EQUALS, Op.WITHIN_DAYS}),
    FieldKind.VISITOR: frozenset({Op.IS_SET, Op.NOT_SET}),
}
# the API's field name -> (kind, the column or identifier kind it reads)
FIELDS: Mapping[str, tuple[FieldKind, str]] = {
    "externalCustomerId": (FieldKind.PROFILE, "external_customer_id"),
    "firstName": (FieldKind.PROFILE, "first_name"),
    "lastName": (FieldKind.PROFILE, "last_name"),
    "languageCode": (FieldKind.PROFILE, "language_code"),
    "email": (FieldKind.CHANNEL, "email"),
    "sms": (FieldKind.CHANNEL, "sms"),
    "mobilepush": (FieldKind.CHANNEL, "mobilepush"),
    "createdAt": (FieldKind.TIME, "created_at"),
    "updatedAt": (FieldKind.TIME, "updated_at"),
    "group": (FieldKind.GROUP, ""),
    "event": (FieldKind.EVENT, ""),
    "visitor": (FieldKind.VISITOR, ""),
}
_NO_VALUE = frozenset({Op.IS_SET, Op.NOT_SET})


@dataclass(frozen=True)
class Condition:
    """One checked condition. ``target`` is the column, identifier kind or custom field id it reads;
    ``value`` is a text, a group id, Unix ms (``before``/``after``) or a number of days; ``event_type`` is
    the event type of an ``event`` condition (None: any type)."""

    kind: FieldKind
    target: str
    op: Op
    value: str | int | None = None
    event_type: str | None = None


@dataclass(frozen=True)
class GroupSpec:
    """A group to create: its name, type and, for a dynamic group, its conditions as given (kept to show them
    back) and as parsed."""

    name: str
    type: GroupType
    match: Match
    conditions: tuple[Condition, ...] = ()
    raw_conditions: tuple[dict[str, Any], ...] = ()


def _text(value: Any, where: str, longest: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= longest:
        raise _Bad(where, f"must be a string of 1-{longest} characters")
    return value


def _days(value: Any, where: str) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_DAYS):
        raise _Bad(where, f"must be a whole number of days from 1 to {MAX_DAYS}")
    return value


def _field(name: Any) -> tuple[FieldKind, str] | None:
    """The kind and target of a field name: a known name, or a custom field id (an integer, or its digits)."""
    if isinstance(name, str) and name in FIELDS:
        return FIELDS[name]
    if isinstance(name, int) and not isinstance(name, bool) and 0 <= name < 2**63:
        return FieldKind.CUSTOM, str(name)
    if isinstance(name, str) and name.isascii() and name.isdigit() and len(name) <= 18:
        return FieldKind.CUSTOM, str(int(name))
    return None


def parse_condition(raw: Any, where: str, errors: FieldErrors, normaliser: Normaliser = _PLAIN) -> Condition | None:
    """One ``{field, op, value?}``, or None with its problems added to ``errors``."""
    if not isinstance(raw, Mapping):
        errors.add(where, "must be an object {field, op, value?}")
        return None
    unknown = sorted(set(raw) - {"field", "op", "value"})
    if unknown:
        errors.add(f"{where}.{unknown[0]}", "is not a condition key (field, op, value)")
        return None
    found = _field(raw.get("field"))
    if found is None:
        errors.add(f"{where}.field", f"unknown field {str(raw.get('field'))[:64]!r}; known: "
                   f"{', '.join(FIELDS)} or a custom field id")
        return None
    kind, target = found
    try:
        op = Op(str(raw.get("op")))
    except ValueError:
        errors.add(f"{where}.op", f"unknown op {str(raw.get('op'))[:64]!r}; known: {', '.join(Op)}")
        return None
    if op not in OPS[kind]:
        errors.add(f"{where}.op", f"{op.value} does not apply to {raw['field']!s:.64}; it takes "
                   f"{', '.join(o.value for o in Op if o in OPS[kind])}")
        return None
    value = raw.get("value")
    if op in _NO_VALUE:
        if value is not None:
            errors.add(f"{where}.value", f"{op.value} takes no value")
            return None
        return Condition(kind, target, op)
    try:
        return _valued(kind, target, op, value, f"{where}.value", normaliser)
    except _Bad as exc:
        errors.add(exc.where, exc.message)
        return None


class _Bad(ValueError):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where, self.message = where, message


def _valued(kind: FieldKind, target: str, op: Op, value: Any, where: str, normaliser: Normaliser) -> Condition:
    """The condition of an op that takes a value, the value checked for the field; ``_Bad`` if it does not fit."""
    if kind is FieldKind.GROUP:
        if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value < 2**63):
            raise _Bad(where, "must be a group id (integer)")
        return Condition(kind, target, op, value)
    if kind is FieldKind.EVENT:
        return _event(op, value, where)
    if op is Op.WITHIN_DAYS:
        return Condition(kind, target, op, _days(value, where))
    if op in (Op.BEFORE, Op.AFTER):
        try:
            return Condition(kind, target, op, read_instant(value))
        except BadInstant as exc:
            raise _Bad(where, str(exc)) from None
    if kind is FieldKind.CUSTOM:
        return Condition(kind, target, op, _custom_text(value, where) if op is not Op.CONTAINS
                         else _text(value, where, MAX_TEXT))
    if kind is FieldKind.CHANNEL and target == "sms" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # a phone as a JSON number, as a contact's sms may be given
    text = _text(value, where, MAX_TEXT)
    if kind is FieldKind.CHANNEL:
        text = _channel_text(normaliser, target, op, text, where)
    return Condition(kind, target, op, text)


def _channel_text(normaliser: Normaliser, target: str, op: Op, text: str, where: str) -> str:
    """The value as the identifier rules store it (``equals``/``not_equals``), or as much of that as a part
    of one can be (``contains``)."""
    if op is not Op.CONTAINS:
        try:
            return normaliser.channel(IdentifierKind(target), text, where)
        except InvalidIdentifier as exc:
            raise _Bad(where, f"{exc.errors[0]['message']} (compared as a contact's {target} is stored)") from None
    if target == "sms":
        digits = "".join(ch for ch in text if ch.isascii() and (ch.isdigit() or ch == "+"))
        if not any(ch.isdigit() for ch in digits):
            raise _Bad(where, "must hold a digit of a phone number (stored as +<digits>)")
        return digits
    stripped = text.strip()
    if not stripped:
        raise _Bad(where, "must not be blank")
    return stripped.lower() if target == "email" else stripped


def _custom_text(value: Any, where: str) -> str:
    """A custom field condition's value as its text: a string as is, ``true``/``false``, a number's JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) and not (isinstance(value, int) and abs(value) > 2**63):
        if not math.isfinite(value):
            raise _Bad(where, "must be a finite number")
        return json.dumps(value)
    if isinstance(value, int):
        raise _Bad(where, "must be a number of at most 19 digits")
    if not isinstance(value, str):
        raise _Bad(where, "must be a string, true/false or a number")
    return _text(value, where, MAX_TEXT)


def custom_readings(text: str) -> tuple[bool | None, float | None]:
    """What else a custom field condition's text matches besides a stored string equal to it: the stored
    boolean it reads as (``"true"``/``"false"``) and the stored number (JSON number syntax, finite)."""
    flag = {"true": True, "false": False}.get(text)
    number = float(text) if len(text) <= 400 and _JSON_NUMBER.fullmatch(text) else None
    return flag, number if number is not None and math.isfinite(number) else None


def _event(op: Op, value: Any, where: str) -> Condition:
    """``equals``/``not_equals`` an event type (a string); ``within_days`` ``{days, type?}``."""
    if op is not Op.WITHIN_DAYS:
        return Condition(FieldKind.EVENT, "", op, event_type=_text(value, where, MAX_EVENT_TYPE))
    if not isinstance(value, Mapping) or set(value) - {"type", "days"}:
        raise _Bad(where, "must be {days, type?}: events of that type (or any) in the last days")
    event_type = value.get("type")
    return Condition(FieldKind.EVENT, "", op, _days(value.get("days"), f"{where}.days"),
                     None if event_type is None else _text(event_type, f"{where}.type", MAX_EVENT_TYPE))


def parse_group(body: Any, normaliser: Normaliser = _PLAIN) -> GroupSpec:
    """``{name, type, conditions?, match?}`` checked whole: every problem named in one ``ValidationFailed``.
    ``normaliser`` reads channel values as the identifier rules store them; the conditions kept to show back
    hold those stored forms."""
    errors = FieldErrors()
    if not isinstance(body, Mapping):
        errors.add("body", "must be an object {name, type, conditions?, match?}")
        errors.raise_if_any()
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        errors.add("name", f"must be a group name of 1-{MAX_NAME} characters")
    try:
        type_ = GroupType(body.get("type", GroupType.STATIC.value))
    except ValueError:
        errors.add("type", "must be static or dynamic")
        type_ = GroupType.STATIC
    try:
        match = Match(body.get("match", Match.ALL.value))
    except ValueError:
        errors.add("match", "must be all or any")
        match = Match.ALL
    raw = body.get("conditions")
    conditions: list[Condition] = []
    if type_ is GroupType.STATIC and raw:
        errors.add("conditions", "only a dynamic group has conditions")
    elif type_ is GroupType.DYNAMIC:
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_CONDITIONS:
            errors.add("conditions", f"a dynamic group needs a list of 1-{MAX_CONDITIONS} conditions")
        else:
            for i, item in enumerate(raw):
                if (c := parse_condition(item, f"conditions[{i}]", errors, normaliser)) is not None:
                    conditions.append(c)
    errors.raise_if_any()
    assert isinstance(name, str)
    kept = tuple(dict(item, value=c.value) if c.kind is FieldKind.CHANNEL and c.value is not None else dict(item)
                 for item, c in zip(raw, conditions, strict=True)) if type_ is GroupType.DYNAMIC else ()
    return GroupSpec(name.strip(), type_, match, tuple(conditions), kept)
