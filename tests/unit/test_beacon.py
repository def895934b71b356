"""Beacon validation (SPEC §2) as a pure function: bytes and limits in, accepted and rejected events out."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import orjson
import pytest

from tracker.beacon import Batch, Limits, decode_pixel, derived_time, parse_batch
from tracker.errors import PayloadTooLarge, ValidationFailed
from tracker.limits import MAX_JSON_DEPTH

RECEIVED = 1_800_000_100_000
SENT = 1_800_000_000_000
VID = "0b7c6a52-3f0e-4a8e-9d55-6c2f1e9b0a11"
LIMITS = Limits()


def event(id: Any = "e1", **fields: Any) -> dict[str, Any]:
    """A valid page_view event, with ``fields`` overriding or adding to it (None removes a field)."""
    base: dict[str, Any] = {"id": id, "type": "page_view", "ts": SENT - 5_000, "url": "https://shop.example/",
                            "ref": "https://google.com/", "title": "Shop", "props": {"plan": "pro"}}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def body(*events: Any, **fields: Any) -> bytes:
    data: dict[str, Any] = {"vid": VID, "sent_at": SENT, "events": list(events) or [event()]}
    data.update(fields)
    return orjson.dumps({k: v for k, v in data.items() if v is not None})


def parse(raw: bytes, limits: Limits = LIMITS, bot: bool = False) -> Batch:
    return parse_batch(raw, limits, RECEIVED, bot=bot)


def stored(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(b) for _, b in parse(raw).accepted]


def only_rejection(ev: Any) -> str:
    batch = parse(body(ev))
    assert batch.accepted == []
    assert len(batch.rejected) == 1
    return str(batch.rejected[0]["reason"])


def fields_of(exc: pytest.ExceptionInfo[ValidationFailed]) -> list[str]:
    return [e["field"] for e in exc.value.errors]


# --- a good beacon -----------------------------------------------------------------------------------


def test_valid_event_is_stored_with_its_fields_and_server_times() -> None:
    """A valid event keeps what the page sent and gains the receive time and the derived ordering time."""
    batch = parse(body(event()))
    assert batch.vid == VID
    assert batch.rejected == []
    assert [i for i, _ in batch.accepted] == ["e1"]
    (e,) = stored(body(event()))
    assert e == {"id": "e1", "type": "page_view", "ts": SENT - 5_000, "url": "https://shop.example/",
                 "ref": "https://google.com/", "title": "Shop", "props": {"plan": "pro"},
                 "rt": RECEIVED, "t": RECEIVED - 5_000}


def test_only_id_and_type_are_required() -> None:
    """An event with just an id and a type is accepted and ordered at the receive time."""
    (e,) = stored(body({"id": "e1", "type": "signup"}))
    assert e == {"id": "e1", "type": "signup", "rt": RECEIVED, "t": RECEIVED}


def test_vid_and_sent_at_are_optional() -> None:
    """A first beacon without a visitor id or send time is valid; the collector assigns the visitor."""
    batch = parse(orjson.dumps({"events": [event()]}))
    assert batch.vid is None
    assert len(batch.accepted) == 1


def test_upper_case_vid_is_normalised() -> None:
    """A visitor id echoed back in upper case is the same visitor."""
    assert parse(body(vid=VID.upper())).vid == VID


def test_reset_only_when_literally_true() -> None:
    """``"reset": true`` asks for a new visitor; any other value does not."""
    assert parse(body(reset=True)).reset is True
    assert parse(body(reset="yes")).reset is False
    assert parse(body()).reset is False


# --- malformed requests (nothing stored) -------------------------------------------------------------


def test_body_over_the_limit_is_payload_too_large() -> None:
    """A body one byte over the limit is refused as too large; one exactly at the limit is read."""
    limits = Limits(max_body_bytes=1000)
    raw = body()
    at_limit = raw + b" " * (1000 - len(raw))  # trailing whitespace keeps the JSON valid
    assert len(parse(at_limit, limits).accepted) == 1
    with pytest.raises(PayloadTooLarge):
        parse(at_limit + b" ", limits)


def test_too_many_events_is_payload_too_large() -> None:
    """More events than allowed in one request is refused as too large, naming the events field."""
    limits = Limits(max_events=3)
    assert len(parse(body(*(event(f"e{i}") for i in range(3))), limits).accepted) == 3
    with pytest.raises(PayloadTooLarge) as exc:
        parse(body(*(event(f"e{i}") for i in range(4))), limits)
    assert exc.value.status == 413
    assert exc.value.body()["field"] == "events"


def test_default_limits_follow_the_spec() -> None:
    """Out of the box: 64 KiB bodies, 100 events, 2 KiB strings, 8 KiB props."""
    assert dataclasses.astuple(LIMITS) == (64 * 1024, 100, 2048, 8192)
    parse(body(*(event(f"e{i}", props=None, ref=None, title=None) for i in range(100))))
    with pytest.raises(PayloadTooLarge):
        parse(body(*(event(f"e{i}", props=None, ref=None, title=None) for i in range(101))))


@pytest.mark.parametrize("raw", [b"", b"{", b'{"events": [}', b"\xff\xfe", b"nul"])
def test_invalid_json_names_the_body(raw: bytes) -> None:
    """A body that is not JSON is a 400 naming the body."""
    with pytest.raises(ValidationFailed) as exc:
        parse(raw)
    assert exc.value.status == 400
    assert fields_of(exc) == ["body"]


@pytest.mark.parametrize("raw", [b"[]", b'"events"', b"42", b"null", b"true"])
def test_json_that_is_not_an_object_names_the_body(raw: bytes) -> None:
    """A JSON body that is not an object is a 400 naming the body."""
    with pytest.raises(ValidationFailed) as exc:
        parse(raw)
    assert fields_of(exc) == ["body"]


@pytest.mark.parametrize("events", [None, [], {}, "page_view", 1])
def test_missing_or_empty_events_names_events(events: Any) -> None:
    """Without a non-empty events list the request is a 400 naming ``events``."""
    data: dict[str, Any] = {"vid": VID}
    if events is not None:
        data["events"] = events
    with pytest.raises(ValidationFailed) as exc:
        parse(orjson.dumps(data))
    assert fields_of(exc) == ["events"]


@pytest.mark.parametrize("vid", ["", "not-a-uuid", 42, ["x"], VID.replace("-", ""), "{" + VID[1:-1] + "}",
                                 VID[:-1] + "g"])
def test_bad_vid_names_vid(vid: Any) -> None:
    """A visitor id that is not a collector-issued UUID is a 400 naming ``vid``."""
    with pytest.raises(ValidationFailed) as exc:
        parse(body(vid=vid))
    assert fields_of(exc) == ["vid"]


@pytest.mark.parametrize("sent_at", ["1800000000000", 1_800_000_000, True, -1, 5_000_000_000_000, [1]])
def test_bad_sent_at_names_sent_at(sent_at: Any) -> None:
    """A send time that is not Unix milliseconds (a string, seconds, out of range) is a 400 naming it."""
    with pytest.raises(ValidationFailed) as exc:
        parse(body(sent_at=sent_at))
    assert fields_of(exc) == ["sent_at"]


def test_every_bad_field_is_named_at_once() -> None:
    """All request-level problems are reported together, so one round trip shows them all."""
    with pytest.raises(ValidationFailed) as exc:
        parse(orjson.dumps({"vid": "x", "sent_at": "y", "events": []}))
    assert fields_of(exc) == ["vid", "sent_at", "events"]
    assert "vid" in exc.value.message and "events" in exc.value.message


# --- per-event validation: bad events are rejected with a reason, good ones kept --------------------

BIG = "x" * 2049
EURO_2100_BYTES = "€" * 700  # 700 characters, 2100 bytes: limits count bytes


@pytest.mark.parametrize(("ev", "reason"), [
    ("page_view", "event must be a JSON object"),
    (["e1"], "event must be a JSON object"),
    (event(id=None), "id:"),
    (event(id=""), "id:"),
    (event(id=7), "id:"),
    (event(id="a" * 65), "id:"),
    (event(id="has space"), "id:"),
    (event(id="a/b"), "id:"),
    (event(id="é"), "id:"),
    (event(type=None), "type:"),
    (event(type=""), "type:"),
    (event(type="   "), "type:"),
    (event(type=3), "type:"),
    (event(type="t" * 129), "type:"),
    (event(type="page\nview"), "type:"),
    (event(type="page\x00view"), "type:"),
    (event(type="page\x7fview"), "type:"),
    (event(ts=1_800_000_000), "ts:"),  # seconds, not milliseconds
    (event(ts="1800000000000"), "ts:"),
    (event(ts=True), "ts:"),
    (event(ts=-5), "ts:"),
    (event(ts=946_684_799_999), "ts:"),  # before 2000
    (event(ts=4_102_444_800_001), "ts:"),  # after 2100
    (event(url=12), "url:"),
    (event(ref=["https://x/"]), "ref:"),
    (event(title={"a": 1}), "title:"),
    (event(url="https://x/" + BIG), "url:"),
    (event(ref=BIG), "ref:"),
    (event(title=BIG), "title:"),
    (event(title=EURO_2100_BYTES), "title:"),
    (event(props=[1, 2]), "props:"),
    (event(props="a=b"), "props:"),
    (event(props=5), "props:"),
    (event(props={f"k{i}": "v" * 1000 for i in range(9)}), "props:"),
    (event(props={"k": BIG}), "props.k:"),
    (event(props={"k": EURO_2100_BYTES}), "props.k:"),
])
def test_bad_event_is_rejected_with_its_reason(ev: Any, reason: str) -> None:
    """Each invalid field of an event rejects that event, with a reason naming the field."""
    assert only_rejection(ev).startswith(reason)


@pytest.mark.parametrize("ev", [
    event(id="a" * 64),
    event(id="A-z_0:9.x"),
    event(id="3f1c2d4e-0000-4000-8000-000000000000"),
    event(type="t" * 128),
    event(type="Add to cart — €"),
    event(ts=946_684_800_000),
    event(ts=4_102_444_800_000),
    event(ts=None),
    event(url="u" * 2048, ref="r" * 2048, title="t" * 2048),
    event(title="€" * 682),  # 2046 bytes
    event(props={"k": "v" * 2048}),
    event(props={f"k{i}": "v" * 1000 for i in range(7)}),  # < 8 KiB encoded
    event(props={"nested": {"a": [1, 2, {"b": None}]}, "n": 1.5, "ok": True}),
])
def test_values_at_or_inside_the_limits_are_accepted(ev: Any) -> None:
    """Values up to each limit, unicode and nested props are accepted."""
    batch = parse(body(ev))
    assert batch.rejected == []
    assert len(batch.accepted) == 1


def test_event_id_with_trailing_newline_is_rejected() -> None:
    """An event id may only hold letters, digits and - _ : . — not a trailing newline."""
    assert only_rejection(event(id="e1\n")).startswith("id:")


def test_limits_are_configurable_per_event() -> None:
    """Smaller configured string and props limits reject events the defaults would accept."""
    limits = Limits(max_string_bytes=10, max_props_bytes=20)
    batch = parse(body(event("a", url="https://example.com/", props=None),
                       event("b", url=None, ref=None, title=None, props={"k": "v" * 30}),
                       event("c", url="short", ref=None, title=None, props=None)), limits)
    assert [i for i, _ in batch.accepted] == ["c"]
    assert [r["reason"].split(":")[0] for r in batch.rejected] == ["url", "props"]


def test_bad_events_are_listed_and_good_ones_in_the_same_batch_kept() -> None:
    """A batch with some bad events keeps the good ones and returns each bad one with index, id and reason."""
    batch = parse(body(event("good-1"), event("bad-ts", ts="yesterday"), event("good-2"), "oops",
                       event("bad-type", type="")))
    assert [i for i, _ in batch.accepted] == ["good-1", "good-2"]
    assert [(r["index"], r.get("id"), r["reason"].split(":")[0]) for r in batch.rejected] == [
        (1, "bad-ts", "ts"), (3, None, "event must be a JSON object"), (4, "bad-type", "type")]
    assert orjson.loads(batch.rejected[1]["event"]) == "oops"
    assert orjson.loads(batch.rejected[0]["event"])["ts"] == "yesterday"


def test_rejected_event_record_is_bounded() -> None:
    """What is kept of a rejected event for operators is cut to a bounded size."""
    (rejection,) = parse(body(event("big", url="u" * 20_000))).rejected
    assert rejection["id"] == "big"
    assert 0 < len(rejection["event"]) <= 4096


def test_rejected_event_id_is_bounded() -> None:
    """A too-long event id is rejected and only a bounded prefix of it is echoed."""
    (rejection,) = parse(body(event("a" * 1000))).rejected
    assert rejection["id"] == "a" * 64


def test_same_id_twice_in_one_batch_is_stored_once() -> None:
    """Two events with the same id in one batch are one event (the first one)."""
    batch = parse(body(event("dup", title="first"), event("other"), event("dup", title="second")))
    assert [i for i, _ in batch.accepted] == ["dup", "other"]
    assert orjson.loads(batch.accepted[0][1])["title"] == "first"
    assert batch.rejected == []


def test_empty_props_are_not_stored() -> None:
    """An empty props object carries nothing and is left out of the stored event."""
    (e,) = stored(body(event(props={})))
    assert "props" not in e


def test_float_ts_is_stored_as_integer_milliseconds() -> None:
    """A fractional millisecond timestamp (performance.now() arithmetic) is stored as whole ms."""
    (e,) = stored(body(event(ts=SENT - 1000 + 0.7)))
    assert e["ts"] == SENT - 1000
    assert isinstance(e["t"], int)
    assert RECEIVED - 1001 <= e["t"] <= RECEIVED - 999


# --- server time wins ---------------------------------------------------------------------------------


def test_derived_time_is_receive_time_minus_client_delay() -> None:
    """Derived time = received_at - (sent_at - ts): the client clock only contributes an offset."""
    assert derived_time(RECEIVED, SENT, SENT - 60_000) == RECEIVED - 60_000
    assert derived_time(RECEIVED, SENT, SENT) == RECEIVED


def test_derived_time_ignores_a_client_clock_that_is_hours_off() -> None:
    """A browser whose clock is 3 hours behind still orders its events by server time."""
    skew = -3 * 3_600_000
    assert derived_time(RECEIVED, SENT + skew, SENT + skew - 2_000) == RECEIVED - 2_000


def test_derived_time_is_never_after_received_at() -> None:
    """An event stamped after the send (a confused clock) is not placed in the future."""
    for sent, ts in [(SENT, SENT + 1), (SENT, SENT + 10**9), (SENT - 5, SENT), (SENT, SENT - 7)]:
        assert derived_time(RECEIVED, sent, ts) <= RECEIVED
    assert derived_time(RECEIVED, SENT, SENT + 10**9) == RECEIVED


def test_derived_time_without_client_times_is_received_at() -> None:
    """Without sent_at or ts the event is ordered at the receive time."""
    assert derived_time(RECEIVED, None, SENT) == RECEIVED
    assert derived_time(RECEIVED, SENT, None) == RECEIVED


def test_stored_events_carry_the_derived_time() -> None:
    """Each stored event holds rt (received) and t (derived) computed from the batch's sent_at."""
    events = stored(body(event("a", ts=SENT - 30_000), event("b", ts=SENT + 50), event("c", ts=None)))
    assert [(e["rt"], e["t"]) for e in events] == [
        (RECEIVED, RECEIVED - 30_000), (RECEIVED, RECEIVED), (RECEIVED, RECEIVED)]


def test_no_sent_at_means_events_are_ordered_at_receive_time() -> None:
    """Without sent_at the client offset is unknown, so events are placed at received_at."""
    (e,) = stored(body(event(ts=SENT - 30_000), sent_at=None))
    assert e["t"] == RECEIVED
    assert e["ts"] == SENT - 30_000


# --- bots ---------------------------------------------------------------------------------------------


def test_bot_requests_flag_every_event() -> None:
    """Events from a crawler are stored with ``"bot": true`` so reports can leave them out."""
    batch = parse(body(event("a"), event("b")), bot=True)
    assert [orjson.loads(b).get("bot") for _, b in batch.accepted] == [True, True]


def test_human_requests_are_not_flagged() -> None:
    """Events from a browser carry no bot flag."""
    assert "bot" not in stored(body())[0]


# --- the pixel fallback ---------------------------------------------------------------------------------


def b64url(raw: bytes, padding: bool) -> str:
    text = base64.urlsafe_b64encode(raw).decode()
    return text if padding else text.rstrip("=")


@pytest.mark.parametrize("padding", [True, False])
def test_pixel_body_decodes_with_or_without_padding(padding: bool) -> None:
    """The pixel's base64url ``d`` decodes to the same body whether or not the ``=`` padding was kept."""
    for raw in (body(), body(event(title="ü?>~")), b'{"events":[1]}', b"{}"):
        d = b64url(raw, padding)
        assert decode_pixel(d) == raw
    assert len(parse(decode_pixel(b64url(body(), padding))).accepted) == 1


def test_pixel_body_uses_the_url_safe_alphabet() -> None:
    """Bytes that encode to '-' and '_' in base64url decode correctly."""
    raw = b'{"events":[{"id":"\xfb\xff","type":"x"}]}'
    d = b64url(raw, padding=False)
    assert "-" in d or "_" in d
    assert decode_pixel(d) == raw


@pytest.mark.parametrize("d", [None, "", "a", "abcde", "é"])
def test_bad_pixel_body_names_d(d: str | None) -> None:
    """A missing ``d`` or one that cannot be base64url is a 400 naming ``d``."""
    with pytest.raises(ValidationFailed) as exc:
        decode_pixel(d)
    assert fields_of(exc) == ["d"]


def test_pixel_body_with_characters_outside_base64url_names_d() -> None:
    """Characters outside the base64url alphabet are a 400 naming ``d``, not silently dropped."""
    with pytest.raises(ValidationFailed) as exc:
        decode_pixel("eyJ9!!!")
    assert fields_of(exc) == ["d"]


@pytest.mark.parametrize(("ev", "reason"), [
    (event(url="https://x/\x00"), "url: contains a NUL"),
    (event(title="a\x00b"), "title: contains a NUL"),
    (event(props={"k": "a\x00"}), "props: contains a NUL"),
    (event(props={"k\x00": 1}), "props: contains a NUL"),
    (event(props={"deep": [{"x": ["\x00"]}]}), "props: contains a NUL"),
])
def test_nul_characters_are_rejected_naming_the_field(ev: Any, reason: str) -> None:
    """PostgreSQL cannot store NUL in text or jsonb, so an event holding one is rejected up front."""
    assert only_rejection(ev).startswith(reason)


def test_a_literal_backslash_u0000_is_just_text() -> None:
    """Six characters that spell an escaped NUL are not a NUL: the event is stored as sent."""
    text = "C:\\u0000\\path"
    [stored_event] = stored(body(event(title=text, props={"k": text})))
    assert stored_event["title"] == text and stored_event["props"] == {"k": text}


# --- nesting and duplicate keys -------------------------------------------------------------------------


def nested(levels: int) -> dict[str, Any]:
    """``levels`` nested objects: ``nested(2) == {"a": {"a": 1}}``."""
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return dict(value)


def deep_json(levels: int) -> bytes:
    """Objects nested ``levels`` deep, as JSON (orjson.dumps stops at ~255 levels)."""
    return b'{"a":' * levels + b"1" + b"}" * levels


def with_deep(raw: bytes, levels: int = 300) -> bytes:
    return raw.replace(b'"@deep"', deep_json(levels))


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 100, 300])
def test_props_nested_past_the_limit_reject_the_event(levels: int) -> None:
    """Props nesting deeper than the limit (orjson's ~255 included) reject that event with its reason, and
    the record kept for operators can still be encoded; the batch's other events are kept."""
    batch = parse(with_deep(body(event("good"), event("deep", props="@deep")), levels))
    assert [i for i, _ in batch.accepted] == ["good"]
    [rejection] = batch.rejected
    assert rejection["id"] == "deep" and rejection["reason"] == f"props: nested deeper than {MAX_JSON_DEPTH} levels"
    assert orjson.loads(rejection["event"])["id"] == "deep"


def test_props_nested_to_the_limit_are_kept() -> None:
    """Props exactly as deep as the limit are stored as sent."""
    [e] = stored(body(event(props=nested(MAX_JSON_DEPTH - 1))))  # props itself is the first level
    assert e["props"] == nested(MAX_JSON_DEPTH - 1)


def test_a_rejected_event_with_props_too_deep_to_encode_is_still_recorded() -> None:
    """An event rejected for another field, whose props nest past what orjson encodes, is recorded without them."""
    [rejection] = parse(with_deep(body(event("bad-ts", ts="x", props="@deep")))).rejected
    assert rejection["reason"].startswith("ts:")
    assert orjson.loads(rejection["event"])["props"] == f"(nested deeper than {MAX_JSON_DEPTH} levels)"


@pytest.mark.parametrize("bad", [[["@deep"]], event("x", url="@deep"), event("x", url=[[["@deep"]]])])
def test_a_body_whose_own_structure_nests_too_deep_is_malformed(bad: Any) -> None:
    """Nesting past the limit outside props (the events list, an event's other fields) is a 400 naming the
    event: the body is malformed, nothing of it is kept."""
    with pytest.raises(ValidationFailed) as exc:
        parse(with_deep(body(event("good"), bad), levels=MAX_JSON_DEPTH))
    assert fields_of(exc) == ["events[1]"]


def test_a_bad_event_nesting_within_the_limit_is_only_rejected() -> None:
    """Below the limit, a wrongly nested field is an ordinary bad event."""
    batch = parse(body(event("good"), event("x", url=nested(MAX_JSON_DEPTH - 4))))
    assert [r["reason"] for r in batch.rejected] == ["url: must be a string"]


def test_unknown_fields_are_ignored_however_deep() -> None:
    """Fields the beacon does not model are neither read nor stored, so their nesting does not matter."""
    raw = with_deep(body(event("good", extra="@deep"), extra="@deep"))
    [e] = [orjson.loads(b) for _, b in parse(raw).accepted]
    assert "extra" not in e


def test_duplicate_keys_keep_the_last_value() -> None:
    """Documented choice: the beacon does not look for repeated keys; the last value of a key counts."""
    raw = b'{"vid":"%s","vid":"%s","events":[{"id":"a","id":"b","type":"x","props":{"k":1,"k":2}}]}' % (
        b"not-a-vid", VID.encode())
    batch = parse(raw)
    assert batch.vid == VID
    [(event_id, stored_event)] = batch.accepted
    assert event_id == "b" and orjson.loads(stored_event)["props"] == {"k": 2}
