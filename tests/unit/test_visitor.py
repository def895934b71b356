"""Visitor ids (SPEC §2): canonical UUIDs, and which id a request belongs to (cookie > body > new)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tracker.visitor import COOKIE, COOKIE_MAX_AGE, choose_visitor_id, new_visitor_id, parse_visitor_id

A = "0b7c6a52-3f0e-4a8e-9d55-6c2f1e9b0a11"
B = "5d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"


def test_new_visitor_ids_are_canonical_and_distinct() -> None:
    """A new visitor id is a lower-case canonical UUID that parses as itself, and each one is fresh."""
    ids = {new_visitor_id() for _ in range(1000)}
    assert len(ids) == 1000
    for vid in ids:
        assert parse_visitor_id(vid) == vid
        assert str(uuid.UUID(vid)) == vid


def test_canonical_uuid_is_accepted_as_is() -> None:
    """A canonical lower-case UUID is a valid visitor id."""
    assert parse_visitor_id(A) == A


@pytest.mark.parametrize("value", [A.upper(), "0B7C6A52-3f0e-4A8E-9d55-6C2F1E9B0A11"])
def test_upper_case_is_normalised(value: str) -> None:
    """Upper or mixed-case hex is the same visitor, in lower case."""
    assert parse_visitor_id(value) == A


@pytest.mark.parametrize("value", [
    None, "", 42, b"0b7c6a52-3f0e-4a8e-9d55-6c2f1e9b0a11", uuid.UUID(A),
    A.replace("-", ""),  # 32 hex digits, no hyphens
    "{" + A + "}",
    "urn:uuid:" + A,
    A[:-1],  # too short
    A + "0",  # too long
    A[:-1] + "g",  # not hex
    " " + A[1:],
    A[:-1] + "\n",
    A[:8] + "_" + A[9:],  # wrong separator
    "0b7c6a523-f0e-4a8e-9d55-6c2f1e9b0a11",  # hyphens in the wrong places
    "null", "undefined",
])
def test_anything_else_is_not_a_visitor_id(value: Any) -> None:
    """Only the 36-character hyphenated UUID form is a visitor id; anything else is refused."""
    assert parse_visitor_id(value) is None


def test_cookie_wins_over_body() -> None:
    """The server-set cookie decides the visitor, even when the body names another one."""
    assert choose_visitor_id(A, B) == (A, False)


def test_body_vid_when_no_cookie() -> None:
    """Without a cookie the body's vid is used (a script-held id, e.g. after the cookie was cleared)."""
    assert choose_visitor_id(None, B) == (B, False)


def test_invalid_cookie_is_ignored() -> None:
    """A tampered or foreign cookie value falls back to the body's vid."""
    assert choose_visitor_id("tampered", B) == (B, False)
    assert choose_visitor_id("", B) == (B, False)


def test_ids_are_normalised_when_chosen() -> None:
    """Whichever source wins, the id comes back in canonical lower case."""
    assert choose_visitor_id(A.upper(), None) == (A, False)
    assert choose_visitor_id(None, B.upper()) == (B, False)


@pytest.mark.parametrize(("cookie", "body"), [(None, None), ("bad", None), (None, "bad"), ("bad", "worse")])
def test_new_visitor_when_nothing_valid(cookie: str | None, body: str | None) -> None:
    """Without a valid cookie or body vid a new visitor id is issued and marked as new."""
    vid, is_new = choose_visitor_id(cookie, body)
    assert is_new is True
    assert parse_visitor_id(vid) == vid
    assert vid not in (A, B)


def test_reset_starts_a_new_visitor() -> None:
    """``reset`` ignores the cookie: the body's vid (the script's new id) wins, else a new id is issued."""
    assert choose_visitor_id(A, B, reset=True) == (B, True)
    assert choose_visitor_id(A, B.upper(), reset=True) == (B, True)
    vid, is_new = choose_visitor_id(A, None, reset=True)
    assert is_new is True
    assert vid != A
    assert parse_visitor_id(vid) == vid
    assert choose_visitor_id(A, "tampered", reset=True)[0] not in (A, vid)


def test_cookie_name_and_lifetime() -> None:
    """The cookie is ``stitcher_vid`` and lives 400 days, the longest browsers honour."""
    assert COOKIE == "stitcher_vid"
    assert COOKIE_MAX_AGE == 400 * 86_400
