"""Signed identify's checks without I/O: the signature (HMAC-SHA256 hex), rotation and the body's shape."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest

from tracker.errors import ValidationFailed
from tracker.identify import MissingSignature, parse_identify, sign, verify


def backend_signature(secret: str, external_id: str) -> str:
    """The README's three lines: what a site's backend computes."""
    return hmac.new(secret.encode(), external_id.encode(), hashlib.sha256).hexdigest()


def test_sign_is_the_backends_hmac_sha256_hex() -> None:
    """The collector checks exactly what the README tells a backend to compute."""
    assert sign("s3cret", "C-10091") == backend_signature("s3cret", "C-10091")
    assert sign("s3cret", "Ünïcode-ID") == backend_signature("s3cret", "Ünïcode-ID")


def test_a_valid_signature_verifies_and_any_other_does_not() -> None:
    """Only the HMAC of this ID under a configured secret passes: not another ID's, another secret's, a cut
    or altered one."""
    good = backend_signature("k1", "C-1")
    assert verify(("k1",), "C-1", good)
    assert verify(("k1",), "C-1", good.upper())  # hex is hex, whatever its case
    assert not verify(("k1",), "C-2", good)
    assert not verify(("k2",), "C-1", good)
    assert not verify(("k1",), "C-1", good[:-1])
    assert not verify(("k1",), "C-1", good[:-1] + ("0" if good[-1] != "0" else "1"))
    assert not verify(("k1",), "C-1", "")
    assert not verify((), "C-1", good)  # no secret: nothing verifies


def test_rotation_accepts_both_secrets_while_configured_and_a_removed_one_no_more() -> None:
    """IDENTIFY_SECRET=new,old accepts signatures under either; once old is removed its signatures fail."""
    old, new = backend_signature("old", "C-7"), backend_signature("new", "C-7")
    assert verify(("new", "old"), "C-7", old)
    assert verify(("new", "old"), "C-7", new)
    assert verify(("new",), "C-7", new)
    assert not verify(("new",), "C-7", old)


def test_an_identify_body_takes_the_id_and_signature() -> None:
    """The script's body is read: the ID as signed (an integer as its digits), the signature, vid, reset."""
    vid = "0b7e4f0e-6c1a-4d1e-9f3e-2a5c8d9e0f11"
    read = parse_identify(orjson.dumps({"externalCustomerId": "C-1", "signature": "ab", "vid": vid, "reset": True}))
    assert (read.external_id, read.signature, read.vid, read.reset) == ("C-1", "ab", vid, True)
    assert parse_identify(orjson.dumps({"externalCustomerId": 42, "signature": "ab"})).external_id == "42"


@pytest.mark.parametrize("field", ["email", "phone", "sms", "channels", "contactId", "firstName"])
def test_a_browser_naming_any_other_field_is_refused(field: str) -> None:
    """An email, a phone or any field but the signed ID is a 400 naming it: a browser never names a person."""
    with pytest.raises(ValidationFailed) as caught:
        parse_identify(orjson.dumps({"externalCustomerId": "C-1", "signature": "ab", field: "ann@example.com"}))
    assert [e["field"] for e in caught.value.errors] == [field]


@pytest.mark.parametrize("body", [b"not json", b"[1]", b'{"signature": "ab"}',
                                  b'{"externalCustomerId": "", "signature": "ab"}',
                                  b'{"externalCustomerId": "  ", "signature": "ab"}',
                                  b'{"externalCustomerId": true, "signature": "ab"}',
                                  b'{"externalCustomerId": "' + b"x" * 257 + b'", "signature": "ab"}',
                                  b'{"externalCustomerId": "a\\u0000b", "signature": "ab"}',
                                  b'{"externalCustomerId": "C-1", "signature": 7}',
                                  b'{"externalCustomerId": "C-1", "signature": "ab", "vid": "nope"}',
                                  b'{"externalCustomerId": "C-1", "signature": "ab", "reset": 1}',
                                  b'\xff\xfe'])
def test_malformed_identify_bodies_are_400(body: bytes) -> None:
    """A body that is not an object with a 1-256 character ID (and sane vid, reset, signature) is a 400."""
    with pytest.raises(ValidationFailed):
        parse_identify(body)


@pytest.mark.parametrize("body", [{"externalCustomerId": "C-1"}, {"externalCustomerId": "C-1", "signature": ""},
                                  {"externalCustomerId": "C-1", "signature": None}])
def test_a_missing_signature_is_named(body: dict[str, object]) -> None:
    """No signature (absent, empty, null) is its own refusal, 403 missing_signature."""
    with pytest.raises(MissingSignature) as caught:
        parse_identify(orjson.dumps(body))
    assert caught.value.status == 403 and caught.value.code == "missing_signature"
