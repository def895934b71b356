"""Identifier kinds, their normalisation and the parsing of a contact payload into an ``Identity``.

Everything that decides *which person* a request is about starts here. A value that is blank or a known
placeholder is ignored (treated as absent and reported back, SPEC §1): integrations send ``" "`` or ``0`` for
"no phone" or "no ID", and such a value must never join two people. A malformed value is rejected (400).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any

import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from phonenumbers import NumberParseException, PhoneNumberFormat, ValidationResult

from stitcher.domain.errors import InvalidIdentifier, ValidationFailed

__all__ = [
    "DEFAULT_PLACEHOLDERS",
    "STORED_ONLY",
    "IdentifierKind",
    "Identity",
    "IdentityReading",
    "Ignored",
    "Normaliser",
    "as_list",
    "read_identity",
]

# SPEC §1: values integrations send for "no value"; the service may configure another list (PLACEHOLDERS)
DEFAULT_PLACEHOLDERS = frozenset({
    "null", "undefined", "none", "nan", "anonymous", "guest", "0", "-1", "[object object]",
})

# Identifier values sit in unique B-tree indexes, whose rows PostgreSQL caps at ~2700 bytes: bounds are in UTF-8
# bytes where characters could exceed that (identifiers.value), in characters where they cannot (the external
# ID's String(256): 256 characters of 4 bytes are 1 KiB).
MAX_EXTERNAL_ID = 256  # characters (1 KiB at most)
MAX_IDENTIFIER_BYTES = 1024  # UTF-8 bytes of any identifier value (a token may be 1024 ASCII characters)


class IdentifierKind(StrEnum):
    """Channel kinds of an eSputnik contact payload; the value is the payload's ``type``."""

    EMAIL = "email"
    SMS = "sms"
    MOBILEPUSH = "mobilepush"
    WEBPUSH = "webpush"
    VIBER = "viber"
    TELEGRAM = "telegram"


# Messenger channels the platform has: kept on the contact and shown, but never used to find, merge or lock a
# person (a Viber or Telegram id says little about who is behind it, and SPEC §1 does not list them).
STORED_ONLY = frozenset({IdentifierKind.VIBER, IdentifierKind.TELEGRAM})


_IMPOSSIBLE_PHONE = {
    ValidationResult.INVALID_COUNTRY_CODE: "has an unknown country code",
    ValidationResult.TOO_SHORT: "is too short",
    ValidationResult.TOO_LONG: "is too long",
    ValidationResult.INVALID_LENGTH: "has a length that no number of its country has",
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "is a local number without an area code",
}


_UNPARSABLE_PHONE = {
    NumberParseException.INVALID_COUNTRY_CODE: "its country code is missing or unknown (write +<code><num>)",
    NumberParseException.NOT_A_NUMBER: "it does not look like a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "it is too short",
    NumberParseException.TOO_SHORT_NSN: "it is too short",
    NumberParseException.TOO_LONG: "it is too long",
}


def _has_control(value: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in value)


@dataclass(frozen=True)
class Normaliser:
    """Turns raw identifier values into their stored form, or raises ``InvalidIdentifier`` saying why.

    Stored forms are what lookups compare, so two spellings of one address must normalise to one string.
    """

    placeholders: frozenset[str] = DEFAULT_PLACEHOLDERS
    default_region: str | None = None

    def __post_init__(self) -> None:
        # Matching is case-insensitive on trimmed values; normalise a hand-written list the same way.
        object.__setattr__(self, "placeholders", frozenset(p.strip().lower() for p in self.placeholders))

    def absence(self, value: Any) -> str | None:
        """Why ``value`` counts as no identifier at all (``"blank"`` or ``"placeholder"``), or None.

        Blank is null, an empty or all-space string; a placeholder is one of ``placeholders`` in any case,
        also as a JSON integer (``0``, ``-1``). Such a value is ignored rather than refused (SPEC §1).
        """
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value is None or (isinstance(value, str) and not value.strip()):
            return "blank"
        if isinstance(value, str) and value.strip().lower() in self.placeholders:
            return "placeholder"
        return None

    def _text(self, value: Any, field: str, *, allow_int: bool) -> str:
        """Trimmed, non-empty, non-placeholder text; the checks every kind shares."""
        if allow_int and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value is None:
            raise InvalidIdentifier(field, "is required")
        if not isinstance(value, str):
            raise InvalidIdentifier(field, "must be a string")
        text = value.strip()
        if not text:
            raise InvalidIdentifier(field, "must not be empty")
        if text.lower() in self.placeholders:
            raise InvalidIdentifier(field, f"{text!r} is a placeholder, not an identifier")
        return text

    def external_id(self, value: Any, field: str = "externalCustomerId") -> str:
        """The customer's ID in the caller's system: trimmed text (ints accepted), 1..256 characters."""
        return self._opaque(value, field, MAX_EXTERNAL_ID, allow_int=True)

    def email(self, value: Any, field: str) -> str:
        """A syntactically valid address, fully lower-cased so that lookups ignore case (SPEC §1)."""
        text = self._text(value, field, allow_int=False)
        try:
            return _normalised_email(text)
        except EmailNotValidError as exc:
            raise InvalidIdentifier(field, f"is not a valid email address: {exc}") from None

    def phone(self, value: Any, field: str) -> str:
        """A phone number in E.164.

        A number without ``+`` is read in ``default_region`` first and then as an international number
        written without the plus (``380671234567``, the form eSputnik's own examples use); ``00`` counts
        as ``+``.
        """
        valid, e164_or_reason = _e164(self._text(value, field, allow_int=True), self.default_region)
        if not valid:
            raise InvalidIdentifier(field, e164_or_reason)
        return e164_or_reason

    def token(self, value: Any, field: str) -> str:
        """A push token (mobile app or browser): opaque trimmed text, 1..1024 bytes of UTF-8."""
        return self._opaque(value, field, MAX_IDENTIFIER_BYTES, allow_int=False)

    def _opaque(self, value: Any, field: str, max_chars: int, *, allow_int: bool) -> str:
        """Text compared as is: non-placeholder, no control characters, at most ``max_chars`` characters
        and ``MAX_IDENTIFIER_BYTES`` bytes."""
        text = self._text(value, field, allow_int=allow_int)
        if len(text) > max_chars:
            raise InvalidIdentifier(field, f"must be at most {max_chars} characters")
        if _has_control(text):
            raise InvalidIdentifier(field, "must not contain control characters")
        return _bounded(text, field)

    def channel(self, kind: IdentifierKind, value: Any, field: str) -> str:
        """Normalise a channel value by its kind; every kind is bounded to ``MAX_IDENTIFIER_BYTES``."""
        if kind is IdentifierKind.EMAIL:
            return _bounded(self.email(value, field), field)
        if kind is IdentifierKind.SMS:
            return self.phone(value, field)  # E.164: at most 16 ASCII characters
        if kind in STORED_ONLY:  # a Viber number or a Telegram chat id, which clients send as a JSON number
            return self._opaque(value, field, MAX_IDENTIFIER_BYTES, allow_int=True)
        return self.token(value, field)


# Validation is a pure function of the text (and the phone region), and the same customers' addresses and
# numbers come back on every update: the last few thousand answers are kept in memory (email-validator and
# phonenumbers cost some 100 µs a call). Only texts short enough to be valid at all are kept (an address has
# at most 254 characters), so hostile megabyte values cannot fill the memory.
_MEMO, _MEMO_MAX_CHARS = 4096, 320


def _normalised_email(text: str) -> str:
    return (_email_memo if len(text) <= _MEMO_MAX_CHARS else _email_form)(text)


def _e164(text: str, default_region: str | None) -> tuple[bool, str]:
    return (_phone_memo if len(text) <= _MEMO_MAX_CHARS else _phone_form)(text, default_region)


def _email_form(text: str) -> str:
    """The address as email-validator normalises it, fully lower-cased; ``EmailNotValidError`` if invalid
    (an error is not kept: it is raised again on the next call).

    A plain ASCII address (``_PLAIN_EMAIL``: a dot-atom local part, LDH labels without ``--``, a letters-only
    top-level domain that is not special-use, within every length limit) is one email-validator accepts and
    normalises to itself, so it is only lower-cased (~1 µs instead of ~70 µs: imports and orders validate
    thousands); anything else goes to email-validator. ``test_identifiers`` checks the two agree.
    """
    if (len(text) <= _MAX_EMAIL and _PLAIN_EMAIL.fullmatch(text) is not None
            and text.rpartition(".")[2].lower() not in _SPECIAL_USE_TLDS):
        local, _, domain = text.partition("@")
        if len(local) <= _MAX_LOCAL and len(domain) <= _MAX_DOMAIN:
            return text.lower()
    return str(validate_email(text, check_deliverability=False).normalized.lower())


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9]|-(?!-))*(?<!-)"  # letters, digits, single hyphens inside, at most 63
_PLAIN_EMAIL = re.compile(
    rf"{_ATEXT}+(?:\.{_ATEXT}+)*@(?:(?=[^.]{{1,63}}\.){_LABEL}\.)+(?=[A-Za-z]{{2,63}}$)[A-Za-z]+", re.ASCII)
_MAX_EMAIL, _MAX_LOCAL, _MAX_DOMAIN = 254, 64, 253
_SPECIAL_USE_TLDS = frozenset(SPECIAL_USE_DOMAIN_NAMES)


def _phone_form(text: str, default_region: str | None) -> tuple[bool, str]:
    """``(True, E.164 form)`` of a phone number, or ``(False, why it is not one)`` (see ``Normaliser.phone``)."""
    if text.startswith("00"):
        text = "+" + text[2:]
    attempts: list[tuple[str, str | None]] = []
    if text.startswith("+"):
        attempts.append((text, None))
    else:
        if default_region:
            attempts.append((text, default_region))
        attempts.append(("+" + text, None))
    reasons: list[str] = []
    for candidate, region in attempts:
        try:
            number = phonenumbers.parse(candidate, region)
        except NumberParseException as exc:
            why = _UNPARSABLE_PHONE.get(exc.error_type, "it is unreadable")
            reasons.append(f"is not a phone number: {why}")
            continue
        possible = phonenumbers.is_possible_number_with_reason(number)
        if possible != ValidationResult.IS_POSSIBLE:
            why = _IMPOSSIBLE_PHONE.get(possible, "is malformed")
            reasons.append(f"is not a possible phone number: it {why}")
            continue
        if not phonenumbers.is_valid_number(number):
            reasons.append("is not a valid phone number: no such number range exists in its country")
            continue
        return True, str(phonenumbers.format_number(number, PhoneNumberFormat.E164))
    # The first reading is the one the caller most likely meant, so its reason is the useful one.
    return False, reasons[0]


_email_memo = lru_cache(maxsize=_MEMO)(_email_form)
_phone_memo = lru_cache(maxsize=_MEMO)(_phone_form)


def _bounded(text: str, field: str) -> str:
    """``text`` if its UTF-8 form fits ``MAX_IDENTIFIER_BYTES`` (it fits when even 4 bytes a character do)."""
    if len(text) * 4 > MAX_IDENTIFIER_BYTES and len(text.encode()) > MAX_IDENTIFIER_BYTES:
        raise InvalidIdentifier(field, f"must be at most {MAX_IDENTIFIER_BYTES} bytes of UTF-8")
    return text


@dataclass(frozen=True)
class Identity:
    """The normalised identifiers one request carries; the input of ``rules.decide``."""

    contact_id: int | None = None
    external_id: str | None = None
    channels: tuple[tuple[IdentifierKind, str], ...] = field(default=())

    def values(self, kind: IdentifierKind) -> tuple[str, ...]:
        """The request's values of one kind, in request order."""
        return tuple(value for k, value in self.channels if k is kind)


Ignored = dict[str, str]  # {"field": "channels[1].value", "reason": "blank"}: reported back, never used


@dataclass(frozen=True)
class IdentityReading:
    """What ``read_identity`` found: the identity, the values it ignored (blank or placeholder, with where
    they were) and the messenger channels to store without using them to find anyone (``STORED_ONLY``)."""

    identity: Identity
    ignored: tuple[Ignored, ...] = ()
    stored_only: tuple[tuple[IdentifierKind, str], ...] = ()


def _contact_id(value: Any, field: str) -> int:
    # JSON clients sometimes quote numbers; a digit string is the same id.
    # at most 19 digits: int() of more than 4,300 refuses with a ValueError, and none fits 2^63 anyway
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value.strip()) < 20:
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidIdentifier(field, "must be an integer")
    if not 0 < value < 2**63:
        raise InvalidIdentifier(field, "must be a positive integer below 2^63")
    return value


def as_list(value: Any) -> Any:
    """A single JSON object where the platform's schema has a list is read as a one-element list (clients
    built on it send ``"channels": {...}`` for one channel); anything else is returned as it is."""
    return [value] if isinstance(value, Mapping) else value


def read_identity(
    payload: Mapping[str, Any],
    normaliser: Normaliser,
    *,
    contact_id: int | None = None,
    field_prefix: str = "",
) -> IdentityReading:
    """Read the identifiers of an eSputnik-style contact payload, reporting every bad field at once.

    ``contact_id`` is the id from the URL (PUT); an id in the body that disagrees with it is an error rather
    than a silent choice. ``field_prefix`` (e.g. ``"contact."`` for subscribe) is put before each field
    name in errors and in ``ignored``. A missing or ``null`` externalCustomerId is absent; a blank or
    placeholder one (``""``, ``0``, ``"null"``), a blank or placeholder channel value and a contactId of
    ``0`` are ignored and listed; a malformed value is a ``ValidationFailed`` naming its field.
    """
    errors: list[dict[str, str]] = []
    ignored: list[Ignored] = []

    def bad(exc: ValidationFailed) -> None:
        errors.extend({"field": field_prefix + e["field"], "message": e["message"]} for e in exc.errors)

    def absent(value: Any, where: str) -> bool:
        reason = normaliser.absence(value)
        if reason is not None:
            ignored.append({"field": field_prefix + where, "reason": reason})
        return reason is not None

    if not isinstance(payload, Mapping):
        where = field_prefix.rstrip(".") or "body"
        raise ValidationFailed([{"field": where, "message": "must be an object"}])

    found_id = contact_id
    for key in ("contactId", "id"):
        raw = payload.get(key)
        if raw is None or absent(raw, key):
            continue
        try:
            body_id = _contact_id(raw, key)
        except InvalidIdentifier as exc:
            bad(exc)
            continue
        if found_id is not None and body_id != found_id:
            message = f"is {body_id} but the request is about contact {found_id}"
            errors.append({"field": field_prefix + key, "message": message})
            continue
        found_id = body_id

    external_id: str | None = None
    raw_ext = payload.get("externalCustomerId")
    if raw_ext is not None and not absent(raw_ext, "externalCustomerId"):
        try:
            external_id = normaliser.external_id(raw_ext)
        except InvalidIdentifier as exc:
            bad(exc)

    channels: list[tuple[IdentifierKind, str]] = []
    stored_only: list[tuple[IdentifierKind, str]] = []
    raw_channels = as_list(payload.get("channels"))
    if raw_channels is None:
        raw_channels = []
    if isinstance(raw_channels, str) or not isinstance(raw_channels, Sequence):
        errors.append({"field": field_prefix + "channels", "message": "must be a list"})
        raw_channels = []
    for i, item in enumerate(raw_channels):
        where = f"channels[{i}]"
        if not isinstance(item, Mapping):
            errors.append({"field": field_prefix + where, "message": "must be an object with type and value"})
            continue
        raw_type = item.get("type")
        kind: IdentifierKind | None = None
        try:
            kind = IdentifierKind(raw_type.strip().lower()) if isinstance(raw_type, str) else None
        except ValueError:
            kind = None
        if kind is None:
            allowed = ", ".join(k.value for k in IdentifierKind)
            errors.append({"field": f"{field_prefix}{where}.type", "message": f"must be one of {allowed}"})
            continue
        if absent(item.get("value"), f"{where}.value"):
            continue
        try:
            value = normaliser.channel(kind, item.get("value"), f"{where}.value")
        except InvalidIdentifier as exc:
            bad(exc)
            continue
        into = stored_only if kind in STORED_ONLY else channels
        if (kind, value) not in into:
            into.append((kind, value))

    if errors:
        raise ValidationFailed(errors)
    identity = Identity(contact_id=found_id, external_id=external_id, channels=tuple(channels))
    return IdentityReading(identity, tuple(ignored), tuple(stored_only))
