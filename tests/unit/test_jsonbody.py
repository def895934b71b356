"""The contacts API's strict JSON reader: what it refuses, and that it names the place of each refusal."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from stitcher.jsonbody import loads, text_problem
from tracker.errors import ValidationFailed
from tracker.limits import MAX_JSON_DEPTH


def refused(raw: bytes) -> list[tuple[str, str]]:
    with pytest.raises(ValidationFailed) as exc:
        loads(raw)
    assert exc.value.status == 400
    return [(e["field"], e["message"]) for e in exc.value.errors]


def fields(raw: bytes) -> list[str]:
    return [f for f, _ in refused(raw)]


def test_a_valid_body_reads_as_orjson_reads_it() -> None:
    """Everything a valid body holds comes back exactly as the beacon's parser would give it."""
    raw = orjson.dumps({"a": [1, -2.5, True, None, "ü😀", {"b": {}}], "c": 2**63 - 1, "d": -(2**63), "e": 1e308})
    assert loads(raw) == orjson.loads(raw)


@pytest.mark.parametrize(("raw", "field"), [
    (b'{"externalCustomerId":"A","externalCustomerId":"B"}', "externalCustomerId"),
    (b'{"contact":{"externalCustomerId":"A","externalCustomerId":"B"}}', "contact.externalCustomerId"),
    (b'{"fields":[{"id":1,"id":2}]}', "fields[0].id"),
    (b'{"a":1,"a":1}', "a"),
])
def test_a_repeated_key_is_refused_naming_its_place(raw: bytes, field: str) -> None:
    """A key given twice in one object is a 400 naming the key with its path, even with equal values."""
    assert refused(raw) == [(field, "is given more than once")]


def test_a_key_repeated_three_times_is_named_once() -> None:
    """One error per repeated key, however often it is repeated."""
    assert fields(b'{"a":1,"a":2,"a":3,"b":1,"b":2}') == ["a", "b"]


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_constants_are_refused(constant: bytes) -> None:
    """NaN and the infinities are not JSON: refused where they stand (orjson refuses them too)."""
    assert fields(b'{"fields":[{"id":1,"value":%s}]}' % constant) == ["fields[0].value"]


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"%d" % 2**63, b"%d" % -(2**63 + 1), b"%d" % 2**70,
                                    b"9" * 5000])
def test_numbers_past_64_bits_are_refused(number: bytes) -> None:
    """A number that neither fits a signed 64-bit integer nor a double is named (int() of 5000 digits included)."""
    [(field, message)] = refused(b'{"address":{"zip":%s}}' % number)
    assert field == "address.zip" and "number" in message


@pytest.mark.parametrize(("raw", "field"), [
    (b'{"firstName":"a\\u0000b"}', "firstName"),
    (b'{"address":{"lines":["ok","\\u0000"]}}', "address.lines[1]"),
    (b'{"address":{"st\\u0000reet":"x"}}', "address"),
    (b'{"a\\u0000":1}', "body"),
    (b'"\\u0000"', "body"),
])
def test_nul_in_any_string_or_key_is_refused_naming_its_place(raw: bytes, field: str) -> None:
    """PostgreSQL text and jsonb cannot hold NUL: refused wherever it is, a key naming its object."""
    [(where, message)] = refused(raw)
    assert where == field and "NUL" in message


def test_a_lone_surrogate_is_refused() -> None:
    """An escaped lone surrogate parses in Python but cannot be encoded or stored: refused."""
    assert fields(b'{"lastName":"\\udc00x"}') == ["lastName"]
    assert loads(b'{"lastName":"\\ud83d\\ude00"}') == {"lastName": "\U0001F600"}


def nested(levels: int) -> bytes:
    return b'{"a":' * (levels - 1) + b"{}" + b"}" * (levels - 1)


def test_nesting_up_to_the_limit_is_accepted_and_past_it_refused() -> None:
    """The body counts as the first level; the place named is where the limit is passed."""
    assert loads(nested(MAX_JSON_DEPTH)) is not None
    [(field, message)] = refused(nested(MAX_JSON_DEPTH + 1))
    assert field == ".".join(["a"] * MAX_JSON_DEPTH) and f"deeper than {MAX_JSON_DEPTH}" in message
    assert loads(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) is not None
    assert fields(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)) == ["[0]" * MAX_JSON_DEPTH]


def test_nesting_that_exhausts_the_parser_is_refused_naming_the_body() -> None:
    """Deep enough for a RecursionError inside the parser: a 400 naming the body."""
    assert refused(b"[" * 200_000 + b"]" * 200_000) == [("body", f"is nested deeper than {MAX_JSON_DEPTH} levels")]


@pytest.mark.parametrize("raw", [b"", b"{", b'{"a":1,}', b"\xef\xbb\xbf{}", b'{"a":"\xff"}'])
def test_malformed_bodies_name_the_body(raw: bytes) -> None:
    """Syntax errors, a BOM and bytes that are not UTF-8 are a 400 naming the body."""
    [(field, message)] = refused(raw)
    assert field == "body" and message.startswith("not valid JSON")


def test_the_error_list_is_bounded() -> None:
    """A body with thousands of bad values answers a bounded error list."""
    raw = orjson.dumps({"a": ["\x00"] * 5000})
    assert len(refused(raw)) == 20


@pytest.mark.parametrize(("text", "ok"), [("plain", True), ("ü😀", True), ("a\x00", False), ("\ud800", False)])
def test_text_problem(text: str, ok: bool) -> None:
    """The one check every stored text passes (query parameters too)."""
    assert (text_problem(text) is None) is ok


def test_parsed_objects_are_plain_dicts() -> None:
    """What reaches the handlers is ordinary JSON data."""
    value: Any = loads(b'{"a":{"b":[{"c":1}]}}')
    assert type(value) is dict and type(value["a"]) is dict and type(value["a"]["b"][0]) is dict
