"""Identifier normalisation and contact-payload parsing (SPEC §1): pure, no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from stitcher.domain.errors import InvalidIdentifier, ValidationFailed
from stitcher.domain.identifiers import (
    DEFAULT_PLACEHOLDERS,
    IdentifierKind,
    Identity,
    Normaliser,
    read_identity,
)

N = Normaliser()
EMAIL, SMS, MOBILEPUSH, WEBPUSH = (
    IdentifierKind.EMAIL, IdentifierKind.SMS, IdentifierKind.MOBILEPUSH, IdentifierKind.WEBPUSH,
)
def _padded(value: str) -> str:
    return f"  {value}\t"


SPELLINGS = [str.lower, str.upper, str.title, _padded]


def placeholder_cases() -> list[str]:
    return [spell(p) for p in DEFAULT_PLACEHOLDERS for spell in SPELLINGS]


def fields(exc: ValidationFailed) -> list[str]:
    return [e["field"] for e in exc.errors]


# --- placeholders ---------------------------------------------------------------------------------------


def test_default_placeholders_are_the_spec_list() -> None:
    """The default placeholder list is the one SPEC §1 names, lower-cased."""
    assert N.placeholders == {
        "null", "undefined", "none", "nan", "anonymous", "guest", "0", "-1", "[object object]",
    }


@pytest.mark.parametrize("value", placeholder_cases())
def test_external_id_placeholder_rejected(value: str) -> None:
    """Every default placeholder, in any case and with surrounding space, is not an external ID."""
    with pytest.raises(InvalidIdentifier) as info:
        N.external_id(value)
    assert info.value.field == "externalCustomerId"
    assert "placeholder" in info.value.errors[0]["message"]


@pytest.mark.parametrize("value", placeholder_cases())
def test_token_placeholder_rejected(value: str) -> None:
    """Every default placeholder, in any case, is not a push token."""
    with pytest.raises(InvalidIdentifier, match="placeholder"):
        N.token(value, "channels[0].value")


@pytest.mark.parametrize("value", placeholder_cases())
def test_email_placeholder_rejected(value: str) -> None:
    """Every default placeholder, in any case, is rejected as an email with the placeholder reason."""
    with pytest.raises(InvalidIdentifier, match="placeholder"):
        N.email(value, "channels[0].value")


@pytest.mark.parametrize("value", ["0", "-1", " 0 ", "null", "NULL", 0, -1])
def test_phone_placeholder_rejected(value: Any) -> None:
    """Placeholders (also as JSON numbers) are rejected as phones with the placeholder reason."""
    with pytest.raises(InvalidIdentifier, match="placeholder"):
        N.phone(value, "channels[0].value")


@pytest.mark.parametrize("value", [0, -1])
def test_integer_placeholder_external_id_rejected(value: int) -> None:
    """An external ID sent as the JSON number 0 or -1 is a placeholder too."""
    with pytest.raises(InvalidIdentifier, match="placeholder"):
        N.external_id(value)


@pytest.mark.parametrize("value", ["test-user", "TEST-USER", " Test-User "])
def test_configured_extra_placeholder_rejected(value: str) -> None:
    """A placeholder added by configuration is rejected case-insensitively."""
    normaliser = Normaliser(placeholders=frozenset({*DEFAULT_PLACEHOLDERS, "test-user"}))
    with pytest.raises(InvalidIdentifier, match="placeholder"):
        normaliser.external_id(value)
    with pytest.raises(InvalidIdentifier, match="placeholder"):
        normaliser.token(value, "channels[0].value")


def test_configured_placeholders_are_matched_case_insensitively_even_if_given_in_capitals() -> None:
    """A hand-written placeholder list in capitals still matches any spelling."""
    normaliser = Normaliser(placeholders=frozenset({"Unknown"}))
    with pytest.raises(InvalidIdentifier, match="placeholder"):
        normaliser.external_id("UNKNOWN")
    assert normaliser.external_id("null") == "null"  # not in this configured list


# --- external ID ----------------------------------------------------------------------------------------


def test_external_id_trimmed() -> None:
    """An external ID is stored trimmed and otherwise unchanged (case kept)."""
    assert N.external_id("  C-10091 ") == "C-10091"


def test_external_id_integer_converted() -> None:
    """An integer external ID is accepted as its decimal string."""
    assert N.external_id(10091) == "10091"


@pytest.mark.parametrize("value", ["", "   ", "\t\n"])
def test_external_id_empty_rejected(value: str) -> None:
    """An empty or blank external ID is rejected."""
    with pytest.raises(InvalidIdentifier, match="empty"):
        N.external_id(value)


def test_external_id_length_limits() -> None:
    """An external ID may be 1..256 characters long."""
    assert N.external_id("x") == "x"
    assert N.external_id("x" * 256) == "x" * 256
    with pytest.raises(InvalidIdentifier, match="256"):
        N.external_id("x" * 257)


@pytest.mark.parametrize("value", ["C-1\x00", "C\n1", "C\x7f1"])
def test_external_id_control_characters_rejected(value: str) -> None:
    """Control characters inside an external ID are rejected."""
    with pytest.raises(InvalidIdentifier, match="control"):
        N.external_id(value)


@pytest.mark.parametrize("value", [True, 1.5, ["C-1"], {"id": 1}])
def test_external_id_non_string_rejected(value: Any) -> None:
    """Booleans, floats, lists and objects are not external IDs."""
    with pytest.raises(InvalidIdentifier, match="string"):
        N.external_id(value)


def test_external_id_error_names_given_field() -> None:
    """The error names the field the caller passes."""
    with pytest.raises(InvalidIdentifier) as info:
        N.external_id("", "contacts[3].externalCustomerId")
    assert info.value.errors == [{"field": "contacts[3].externalCustomerId", "message": "must not be empty"}]


# --- email ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("Ann@Example.com", "ann@example.com"),
        ("  ANN@EXAMPLE.COM ", "ann@example.com"),
        ("Ann.Lee+News@Mail.Example.org", "ann.lee+news@mail.example.org"),
    ],
)
def test_email_trimmed_and_fully_lower_cased(raw: str, stored: str) -> None:
    """Emails are trimmed and fully lower-cased, local part included (SPEC §1)."""
    assert N.email(raw, "channels[0].value") == stored


@pytest.mark.parametrize(
    "value",
    ["ann", "ann@", "@example.com", "ann@@example.com", "a b@example.com", "ann@localhost", "ann@.com"],
)
def test_invalid_email_rejected(value: str) -> None:
    """Malformed addresses are rejected with a reason naming the field."""
    with pytest.raises(InvalidIdentifier, match="not a valid email") as info:
        N.email(value, "channels[2].value")
    assert info.value.field == "channels[2].value"


@pytest.mark.parametrize("value", ["", "  ", None, 42])
def test_email_empty_or_not_text_rejected(value: Any) -> None:
    """An empty, missing or numeric email is rejected."""
    with pytest.raises(InvalidIdentifier):
        N.email(value, "channels[0].value")


# --- phone ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("+380 (67) 123-45-67", "+380671234567"),
        ("+380671234567", "+380671234567"),
        (" +1 (202) 555-0123 ", "+12025550123"),
        ("+44 20 7946 0958", "+442079460958"),
        ("00380671234567", "+380671234567"),
        ("380671234567", "+380671234567"),  # eSputnik's own examples omit the plus
        (380671234567, "+380671234567"),
    ],
)
def test_phone_to_e164(raw: Any, stored: str) -> None:
    """Phones are stored in E.164 whatever their punctuation."""
    assert N.phone(raw, "channels[1].value") == stored


def test_phone_default_region_for_national_numbers() -> None:
    """A national number without '+' is read in the configured default region."""
    assert Normaliser(default_region="UA").phone("067 123 45 67", "f") == "+380671234567"
    assert Normaliser(default_region="US").phone("(202) 555-0123", "f") == "+12025550123"


def test_phone_default_region_still_accepts_international_without_plus() -> None:
    """With a default region, an international number written without '+' still parses."""
    assert Normaliser(default_region="US").phone("380671234567", "f") == "+380671234567"


def test_phone_national_number_without_region_rejected() -> None:
    """A national number cannot be read without a default region."""
    with pytest.raises(InvalidIdentifier, match="phone number"):
        N.phone("067 123 45 67", "f")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("+380 67", "too short"),
        ("+380 67 123 45 67 89 01", "too long"),
        ("+999 123 4567", "not a phone number"),
        ("hello", "not a phone number"),
        ("+380 00 000 00 00", "not a valid phone number"),
    ],
)
def test_invalid_phone_rejected_saying_why(value: str, reason: str) -> None:
    """Impossible or invalid phones are rejected with the reason."""
    with pytest.raises(InvalidIdentifier, match=reason) as info:
        N.phone(value, "channels[1].value")
    assert info.value.field == "channels[1].value"


@pytest.mark.parametrize("value", ["", " ", None, True])
def test_phone_empty_or_not_text_rejected(value: Any) -> None:
    """An empty, missing or boolean phone is rejected."""
    with pytest.raises(InvalidIdentifier):
        N.phone(value, "f")


# --- tokens ---------------------------------------------------------------------------------------------


def test_token_trimmed_and_case_kept() -> None:
    """Push tokens are opaque: trimmed, case and content kept."""
    assert N.token("  fcm:AbC-123_xyz  ", "f") == "fcm:AbC-123_xyz"


def test_token_length_limits() -> None:
    """A token may be 1..1024 characters long."""
    assert N.token("t" * 1024, "f") == "t" * 1024
    with pytest.raises(InvalidIdentifier, match="1024"):
        N.token("t" * 4097, "f")
    with pytest.raises(InvalidIdentifier, match="empty"):
        N.token("  ", "f")


def test_token_is_bounded_in_utf8_bytes() -> None:
    """A token of 4-byte characters is bounded by its 1024 UTF-8 bytes (PostgreSQL's B-tree row limit), not by
    its 1024 characters."""
    assert N.token("\U0001F600" * 256, "f") == "\U0001F600" * 256
    for kind in (MOBILEPUSH, WEBPUSH):
        with pytest.raises(InvalidIdentifier, match="1024 bytes") as info:
            N.channel(kind, "\U0001F600" * 257, "channels[0].value")
        assert info.value.field == "channels[0].value"
    with pytest.raises(InvalidIdentifier, match="1024 bytes"):
        N.token("\U0001F600" * 1024, "f")


def test_external_id_of_256_four_byte_characters_is_accepted() -> None:
    """The external ID is bounded in characters (256 of them fit its unique index in any script)."""
    assert N.external_id("\U0001F600" * 256) == "\U0001F600" * 256
    with pytest.raises(InvalidIdentifier, match="256 characters"):
        N.external_id("\U0001F600" * 257)


def test_emails_are_bounded_far_below_the_identifier_bound() -> None:
    """email-validator refuses an address past 254 bytes of UTF-8, so no email can reach the 1024-byte bound."""
    assert len(N.email("\U0001F600" * 50 + "@example.com", "f").encode()) == 212
    with pytest.raises(InvalidIdentifier, match="too long"):
        N.email("\U0001F600" * 64 + "@example.com", "f")


def test_token_non_string_rejected() -> None:
    """A token must be text."""
    with pytest.raises(InvalidIdentifier, match="string"):
        N.token(123, "f")


@pytest.mark.parametrize(
    ("kind", "raw", "stored"),
    [
        (EMAIL, " Ann@Example.com", "ann@example.com"),
        (SMS, "+380 (67) 123-45-67", "+380671234567"),
        (MOBILEPUSH, " tok-A ", "tok-A"),
        (WEBPUSH, " https://push.example/abc ", "https://push.example/abc"),
    ],
)
def test_channel_dispatches_by_kind(kind: IdentifierKind, raw: str, stored: str) -> None:
    """channel() normalises a value by its kind."""
    assert N.channel(kind, raw, "f") == stored


def parse_identity(payload: Any, normaliser: Normaliser, **kw: Any) -> Identity:
    """The identity ``read_identity`` reads from a payload (what the payload parser uses)."""
    return read_identity(payload, normaliser, **kw).identity


# --- Identity and parse_identity ------------------------------------------------------------------------


def test_identity_values_by_kind_in_order() -> None:
    """Identity.values returns one kind's values in request order."""
    identity = Identity(None, None, ((EMAIL, "b@x.io"), (SMS, "+380671234567"), (EMAIL, "a@x.io")))
    assert identity.values(EMAIL) == ("b@x.io", "a@x.io")
    assert identity.values(WEBPUSH) == ()


def test_parse_full_payload() -> None:
    """A full payload yields normalised, de-duplicated channels in request order and the external ID."""
    payload = {
        "firstName": "Ann",
        "externalCustomerId": " C-10091 ",
        "channels": [
            {"type": "email", "value": "Ann@Example.com"},
            {"type": "SMS", "value": "+380 (67) 123-45-67"},
            {"type": "MobilePush", "value": "tok-1", "device": "android"},
            {"type": "email", "value": "ann@example.com "},
            {"type": "webpush", "value": "wp-1"},
        ],
    }
    assert parse_identity(payload, N) == Identity(
        contact_id=None,
        external_id="C-10091",
        channels=(
            (EMAIL, "ann@example.com"), (SMS, "+380671234567"), (MOBILEPUSH, "tok-1"), (WEBPUSH, "wp-1"),
        ),
    )


@pytest.mark.parametrize("payload", [{}, {"externalCustomerId": None, "channels": None}])
def test_parse_missing_or_null_external_id_is_absent(payload: dict[str, Any]) -> None:
    """A missing or null externalCustomerId is absent, not an error."""
    assert parse_identity(payload, N) == Identity(None, None, ())


@pytest.mark.parametrize(("value", "reason"), [
    ("null", "placeholder"), ("undefined", "placeholder"), ("", "blank"), ("  ", "blank"),
    ("Anonymous", "placeholder"), (0, "placeholder"), (-1, "placeholder"),
])
def test_parse_blank_or_placeholder_external_id_is_ignored(value: Any, reason: str) -> None:
    """A blank or placeholder externalCustomerId is absent, and named under ``ignored`` with the reason."""
    reading = read_identity({"externalCustomerId": value}, N)
    assert reading.identity == Identity(None, None, ())
    assert reading.ignored == ({"field": "externalCustomerId", "reason": reason},)


@pytest.mark.parametrize(("kind", "value", "reason"), [
    ("sms", " ", "blank"), ("sms", "", "blank"), ("email", None, "blank"), ("sms", 0, "placeholder"),
    ("email", "NULL", "placeholder"), ("mobilepush", "undefined", "placeholder"), ("webpush", "[object Object]",
                                                                                   "placeholder"),
])
def test_parse_blank_or_placeholder_channel_value_is_ignored(kind: str, value: Any, reason: str) -> None:
    """A blank or placeholder channel value never becomes an identifier; the others still count."""
    payload = {"channels": [{"type": "email", "value": "ann@example.com"}, {"type": kind, "value": value}]}
    reading = read_identity(payload, N, field_prefix="contact.")
    assert reading.identity.channels == ((EMAIL, "ann@example.com"),)
    assert reading.ignored == ({"field": "contact.channels[1].value", "reason": reason},)


def test_parse_contact_id_zero_is_ignored() -> None:
    """``"id": 0`` (a client's default for a new contact) names no contact."""
    reading = read_identity({"id": 0, "externalCustomerId": "C-1"}, N)
    assert reading.identity == Identity(None, "C-1", ())
    assert reading.ignored == ({"field": "id", "reason": "placeholder"},)


def test_parse_single_channel_object_is_a_one_element_list() -> None:
    """``channels`` given as one object is read as a list of that one channel."""
    assert parse_identity({"channels": {"type": "email", "value": "Ann@x.io"}}, N).channels == ((EMAIL, "ann@x.io"),)


def test_parse_viber_and_telegram_are_stored_only() -> None:
    """viber and telegram channels are kept apart: stored, never among the identity's finding channels."""
    reading = read_identity({"channels": [{"type": "Viber", "value": " +380671234567 "},
                                          {"type": "telegram", "value": "123456789"},
                                          {"type": "email", "value": "a@x.io"}]}, N)
    assert reading.identity.channels == ((EMAIL, "a@x.io"),)
    assert reading.stored_only == ((IdentifierKind.VIBER, "+380671234567"), (IdentifierKind.TELEGRAM, "123456789"))


def test_parse_collects_every_bad_field() -> None:
    """All bad fields of one payload are reported together, each by name."""
    payload = {
        "externalCustomerId": "undefined",
        "channels": [
            {"type": "email", "value": "not-an-email"},
            {"type": "sms", "value": "+380 67"},
            {"type": "fax", "value": "123"},
            {"type": "mobilepush", "value": "null"},
            {"type": "email", "value": "ok@example.com"},
            "junk",
            {"value": "x"},
        ],
        "contactId": "abc",
    }
    with pytest.raises(ValidationFailed) as info:
        parse_identity(payload, N)
    assert sorted(fields(info.value)) == sorted([  # the placeholders are ignored, not errors
        "contactId",
        "channels[0].value",
        "channels[1].value",
        "channels[2].type",
        "channels[5]",
        "channels[6].type",
    ])
    assert all(e["message"] for e in info.value.errors)


def test_parse_unknown_type_message_lists_allowed_types() -> None:
    """An unknown channel type is named with the allowed types."""
    with pytest.raises(ValidationFailed) as info:
        parse_identity({"channels": [{"type": "fax", "value": "1"}]}, N)
    assert info.value.errors == [
        {"field": "channels[0].type", "message": "must be one of email, sms, mobilepush, webpush, viber, telegram"},
    ]


def test_parse_missing_channel_value_is_ignored_as_blank() -> None:
    """A channel without a value is blank: ignored and named."""
    assert read_identity({"channels": [{"type": "email"}]}, N).ignored == (
        {"field": "channels[0].value", "reason": "blank"},)


def test_parse_channels_must_be_a_list() -> None:
    """channels that is not a list is an error."""
    with pytest.raises(ValidationFailed) as info:
        parse_identity({"channels": "ann@example.com"}, N)
    assert fields(info.value) == ["channels"]


@pytest.mark.parametrize(("payload", "expected"), [
    ({"contactId": 42}, 42),
    ({"id": 42}, 42),
    ({"contactId": "42"}, 42),
    ({"contactId": None}, None),
])
def test_parse_contact_id_from_payload(payload: dict[str, Any], expected: int | None) -> None:
    """contactId or id in the payload is read as an integer."""
    assert parse_identity(payload, N).contact_id == expected


@pytest.mark.parametrize("value", [-3, True, 4.2, "x"])
def test_parse_bad_contact_id_is_error(value: Any) -> None:
    """A contactId that is not a positive integer is an error naming it."""
    with pytest.raises(ValidationFailed) as info:
        parse_identity({"contactId": value}, N)
    assert fields(info.value) == ["contactId"]


def test_parse_contact_id_keyword_from_path() -> None:
    """The contact id from the URL is used and may be repeated, equal, in the body."""
    assert parse_identity({}, N, contact_id=7).contact_id == 7
    assert parse_identity({"id": 7}, N, contact_id=7).contact_id == 7


def test_parse_body_id_disagreeing_with_path_is_error() -> None:
    """A body id different from the URL's contact id is an error, not a silent choice."""
    with pytest.raises(ValidationFailed) as info:
        parse_identity({"id": 8}, N, contact_id=7)
    assert fields(info.value) == ["id"]


def test_parse_field_prefix_in_errors() -> None:
    """field_prefix is put before each field name (e.g. subscribe's contact object)."""
    payload = {"contactId": "x", "channels": [{"type": "email", "value": "x"}]}
    with pytest.raises(ValidationFailed) as info:
        parse_identity(payload, N, field_prefix="contact.")
    assert fields(info.value) == ["contact.contactId", "contact.channels[0].value"]


def test_parse_non_object_payload_is_error() -> None:
    """A payload that is not a JSON object is an error."""
    with pytest.raises(ValidationFailed):
        parse_identity(["x"], N)  # type: ignore[arg-type]


# --- remembered answers: the same value validated again gives the same answer, nothing more -----------------


def test_a_repeated_email_or_phone_gets_the_same_answer_and_a_bad_one_the_same_error() -> None:
    n = Normaliser()
    for _ in range(3):
        assert n.email(" Ann@Example.COM ", "email") == "ann@example.com"
        assert n.phone("+380 67 123 4567", "sms") == "+380671234567"
        with pytest.raises(InvalidIdentifier, match="not a valid email"):
            n.email("ann@@example.com", "email")
        with pytest.raises(InvalidIdentifier, match="sms"):
            n.phone("+3806712", "sms")


def test_a_remembered_phone_reading_is_never_used_for_another_default_region() -> None:
    assert Normaliser(default_region="UA").phone("0671234567", "sms") == "+380671234567"
    with pytest.raises(InvalidIdentifier):
        Normaliser().phone("0671234567", "sms")  # without a region: no country code


def test_huge_values_are_validated_but_never_remembered() -> None:
    from stitcher.domain import identifiers

    before = identifiers._email_memo.cache_info().currsize
    with pytest.raises(InvalidIdentifier):
        Normaliser().email("a" * 100_000 + "@example.com", "email")
    assert identifiers._email_memo.cache_info().currsize == before


def _reference_email(text: str) -> str | None:
    from email_validator import EmailNotValidError, validate_email
    try:
        return str(validate_email(text, check_deliverability=False).normalized.lower())
    except EmailNotValidError:
        return None


def _email_or_none(text: str) -> str | None:
    from email_validator import EmailNotValidError

    from stitcher.domain.identifiers import _email_form
    try:
        return _email_form(text)
    except EmailNotValidError:
        return None


def test_the_plain_address_fast_path_agrees_with_email_validator() -> None:
    """Plain ASCII addresses skip email-validator (70 µs a call): on 20,000 generated addresses, valid and
    not (dots, hyphens, ``--`` and ``xn--`` labels, special-use and numeric top-level domains, every length
    limit, non-ASCII, quotes, spaces), the normalised form and the verdict are email-validator's own."""
    import random

    rng = random.Random(20261201)
    local_chars = "abcXYZ019.!#$%&'*+/=?^_`{|}~- \"(),:;<>@[\\]é"
    label_chars = "abcXYZ019-_é."
    tlds = ["com", "COM", "io", "c", "c0m", "123", "test", "local", "localhost", "onion", "arpa", "invalid",
            "xn--p1ai", "museum", "a" * 63, "a" * 64, "рф", ""]

    def piece(chars: str, most: int) -> str:
        return "".join(rng.choice(chars) for _ in range(rng.randint(0, most)))

    cases = ["Ann@Shop.Example", "a" * 64 + "@example.com", "a" * 65 + "@example.com",
             "a@" + ".".join(["b" * 63] * 3) + ".com", "a@" + ".".join(["b" * 63] * 4) + ".com",
             "a@" + "b" * 64 + ".com", "x@a--b.com", "x@xn--80ak6aa92e.com", "x@-a.com", "x@a-.com"]
    for _ in range(20_000):
        local = piece(local_chars, 12) if rng.random() < 0.5 else rng.choice(["a", "first.last", "a+tag", "x" * 64])
        labels = [piece(label_chars, 10) if rng.random() < 0.4 else rng.choice(["shop", "a-b", "mail", "b" * 63])
                  for _ in range(rng.randint(0, 3))]
        cases.append(local + "@" + ".".join([*labels, rng.choice(tlds)]))
    for text in cases:
        assert _email_or_none(text) == _reference_email(text), text
