"""Strict JSON for the contacts API: every body is checked once, generically, before any field is read.

Refused with a 400 naming the place (``contact.address.street``, ``fields[0].value``): a key given twice in
one object, NaN/Infinity, a number that does not fit in 64 bits, a NUL character or a lone surrogate in any
string or key (PostgreSQL text and jsonb cannot hold them, the JSON encoder refuses them), and nesting deeper
than ``MAX_JSON_DEPTH``. orjson cannot report duplicate keys, so API bodies (≤ 1 MiB, rare next to beacons)
go through the stdlib parser; the beacon keeps orjson.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from tracker.errors import ValidationFailed
from tracker.limits import MAX_JSON_DEPTH

__all__ = ["decode", "loads", "problems", "text_problem"]

_MIN_INT, _MAX_INT = -(2**63), 2**63 - 1
_MAX_ERRORS = 20
_SCALARS = (int, float, bool, type(None))


class _Refused:
    """A parsed value that cannot be accepted; reported with its place by the walk after parsing."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


class _Twice(dict[str, Any]):
    """An object in which some keys were given more than once (never leaves this module)."""

    twice: list[str]


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    twice = _Twice(obj)
    seen: set[str] = set()
    twice.twice = []
    for key, _ in pairs:
        if key in seen and key not in twice.twice:
            twice.twice.append(key)
        seen.add(key)
    return twice


def _int(text: str) -> int | _Refused:
    # the length test first: int() of thousands of digits is slow, and refused past 4300 of them
    if len(text) <= 20 and _MIN_INT <= (value := int(text)) <= _MAX_INT:
        return value
    return _Refused("is a number that does not fit in 64 bits")


def _float(text: str) -> float | _Refused:
    value = float(text)
    return value if value - value == 0 else _Refused("is a number too large for a double")


def _constant(text: str) -> _Refused:
    return _Refused(f"is {text}, which is not a JSON number")


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored as text (a NUL character, a lone surrogate), or None."""
    if "\x00" in text:
        return "must not contain a NUL character"
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return "must be Unicode text (it holds a lone surrogate)"
    return None


def _problems(value: Any, where: str, depth: int) -> Iterator[tuple[str, str]]:
    """(place, message) of everything refused in ``value``; ``depth`` is the level ``value`` sits at."""
    if isinstance(value, str):
        if (why := text_problem(value)) is not None:
            yield where, why
        return
    if isinstance(value, _Refused):
        yield where, value.why
        return
    if not isinstance(value, dict | list):
        return
    if depth > MAX_JSON_DEPTH:
        yield where, f"is nested deeper than {MAX_JSON_DEPTH} levels"
        return
    prefix = f"{where}." if where else ""
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from _problems(item, f"{where}[{i}]", depth + 1)
        return
    for key in getattr(value, "twice", ()):
        yield prefix + key, "is given more than once"
    for key, item in value.items():
        if (why := text_problem(key)) is not None:
            yield where or "body", f"has a key that {why}"
            continue
        yield from _problems(item, prefix + key, depth + 1)


def decode(raw: bytes) -> Any:
    """Parse an API body without judging its values: ``ValidationFailed`` (400) only when it cannot be read
    at all (not UTF-8, not JSON, too deep for the parser). What it holds that cannot be accepted is left in
    place for ``problems`` to report; a caller that takes the value must have seen ``problems`` empty for it.
    """
    try:
        value = json.loads(raw.decode(), object_pairs_hook=_object, parse_int=_int, parse_float=_float,
                           parse_constant=_constant)
    except UnicodeDecodeError as exc:
        raise ValidationFailed([{"field": "body", "message": "not valid JSON: not UTF-8"}]) from exc
    except json.JSONDecodeError as exc:
        raise ValidationFailed([{"field": "body", "message": f"not valid JSON: {exc.msg}"}]) from exc
    except RecursionError as exc:
        message = f"is nested deeper than {MAX_JSON_DEPTH} levels"
        raise ValidationFailed([{"field": "body", "message": message}]) from exc
    return value


def _clean(value: Any, depth: int) -> bool:
    """Whether nothing in ``value`` is refused: ``_problems``'s test without naming places (a 3,000-row import
    is some 50,000 values; naming each place costs more than the test), its string test inlined. A
    ``_Twice`` or ``_Refused`` is none of the plain types: not clean, and ``_problems`` names it."""
    kind = type(value)
    if kind is str:
        return "\x00" not in value and (value.isascii() or text_problem(value) is None)
    if kind is not dict and kind is not list:
        return kind in _SCALARS
    if depth > MAX_JSON_DEPTH:
        return False
    for key in value if kind is dict else ():
        if "\x00" in key or (not key.isascii() and text_problem(key) is not None):
            return False
    for item in value.values() if kind is dict else value:
        if type(item) is str:
            if "\x00" in item or (not item.isascii() and text_problem(item) is not None):
                return False
        elif not _clean(item, depth + 1):
            return False
    return True


def problems(value: Any) -> Iterator[tuple[str, str]]:
    """(place, message) of everything refused in a ``decode``d body, in document order; a body whose parts
    are judged apart (orders) can refuse each part alone."""
    return iter(()) if _clean(value, 1) else _problems(value, "", 1)


def loads(raw: bytes) -> Any:
    """Parse an API body, raising ``ValidationFailed`` (400) naming the body or each refused place."""
    value = decode(raw)
    errors = []
    for where, message in problems(value):
        errors.append({"field": where or "body", "message": message})
        if len(errors) == _MAX_ERRORS:
            break
    if errors:
        raise ValidationFailed(errors)
    return value
