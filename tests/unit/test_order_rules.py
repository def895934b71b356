"""Orders without I/O: whose order it is (rules.decide_order_owner), what a post changes (domain.orders.plan),
and how an order body is read (stitcher.orders.payload)."""

from __future__ import annotations

from typing import Any

import pytest

from stitcher import jsonbody
from stitcher.domain.errors import ValidationFailed
from stitcher.domain.identifiers import IdentifierKind, Identity, Normaliser
from stitcher.domain.orders import OrderCommand, OrderOutcome, OrderStatus, plan, timeline_event_id
from stitcher.domain.rules import Candidate, Lookup, Mode, OrderOwner, decide_order_owner, lookup_kinds
from stitcher.orders.payload import MAX_ORDERS, parse_orders

EMAIL, SMS = IdentifierKind.EMAIL, IdentifierKind.SMS
ANN = (EMAIL, "ann@example.com")
PHONE = (SMS, "+380671234567")


def contact(id: int, ext: str | None = None, *, deleted: bool = False, at: float = 100.0) -> Candidate:
    return Candidate(id=id, external_id=ext, deleted=deleted, updated_at=at)


def ident(*channels: tuple[IdentifierKind, str], ext: str | None = None) -> Identity:
    return Identity(external_id=ext, channels=tuple(channels))


def found(by_ext: Candidate | None = None, **channels: list[Candidate]) -> Lookup:
    pairs = {"email": ANN, "sms": PHONE}
    return Lookup(by_external_id=by_ext, by_channel={pairs[k]: tuple(v) for k, v in channels.items()})


def test_orders_find_by_external_id_then_email_then_phone_never_push_tokens():
    """SPEC §3: an order's buyer is found by externalCustomerId > email > phone."""
    assert lookup_kinds(Mode.ORDER) == (EMAIL, SMS)


def test_no_match_creates_a_contact():
    """Nobody holds the order's identifiers: a new contact."""
    assert decide_order_owner(ident(ANN, PHONE, ext="C-1"), found()) == OrderOwner(None)


def test_the_external_id_holder_wins_over_channels_and_nothing_merges():
    """The contact holding the external ID gets the order, even if the email points at someone else."""
    owner = decide_order_owner(ident(ANN, ext="C-1"), found(contact(5, "C-1"), email=[contact(7)]))
    assert owner == OrderOwner(5, "externalCustomerId")


def test_an_email_match_without_an_external_id_gets_the_order_as_add_update_would_decide():
    """The add/update rule (Example 1) picks the unidentified email contact; the order lands there."""
    owner = decide_order_owner(ident(ANN, PHONE, ext="C-1"), found(email=[contact(7)], sms=[contact(8)]))
    assert owner == OrderOwner(7, "email")


def test_contacts_holding_another_external_id_are_never_taken():
    """Every email match holds another external ID: the order's buyer is a new contact."""
    assert decide_order_owner(ident(ANN, ext="C-1"), found(email=[contact(7, "C-9")])) == OrderOwner(None)


def test_without_an_external_id_the_best_email_match_wins_then_the_phone():
    """Shared email: the one without an external ID, else the most recently updated; no email: the phone."""
    shared = [contact(3, "C-3", at=300), contact(4, "C-4", at=400)]
    assert decide_order_owner(ident(ANN), found(email=shared)) == OrderOwner(4, "email")
    assert decide_order_owner(ident(ANN), found(email=[*shared, contact(2, at=1)])) == OrderOwner(2, "email")
    assert decide_order_owner(ident(ANN, PHONE), found(sms=[contact(9, "C-9")])) == OrderOwner(9, "sms")


def test_a_deleted_holder_of_the_external_id_keeps_the_order():
    """A soft-deleted contact with the order's ID is its owner (it is not restored: the service never
    writes a contact from an order)."""
    assert decide_order_owner(ident(ext="C-1"), found(contact(5, "C-1", deleted=True))) == \
        OrderOwner(5, "externalCustomerId")


def command(status: str = "INITIALIZED", index: int = 0, **data: Any) -> OrderCommand:
    body = {"externalOrderId": "O-1", "status": status, "totalCost": 10, **data}
    return OrderCommand(index, "O-1", ident(ext="C-1"), OrderStatus(status), 1_000, body)


def test_a_new_order_is_created_with_every_status_it_reaches_in_order():
    """First post: created; two posts of one order in one request: both statuses, in request order."""
    p = plan(None, [command(), command("DELIVERED", 1)])
    assert p.outcome is OrderOutcome.CREATED and p.final.index == 1
    assert p.statuses == (OrderStatus.INITIALIZED, OrderStatus.DELIVERED)


def test_a_resend_changes_nothing_and_a_change_updates():
    """Equal data: unchanged; a new status or a corrected total: updated."""
    stored = dict(command().data)
    assert plan(stored, [command()]).outcome is OrderOutcome.UNCHANGED
    assert plan(stored, [command("IN_PROGRESS")]).outcome is OrderOutcome.UPDATED
    assert plan(stored, [command(totalCost=12)]).outcome is OrderOutcome.UPDATED
    with pytest.raises(ValueError):
        plan(stored, [])


def test_timeline_event_ids_are_one_per_order_and_status_and_fit_the_column():
    """Deterministic, so a repeated status is kept out by the timeline's unique (contact, event id)."""
    longest = timeline_event_id(2**63 - 1, OrderStatus.ABANDONED_SHOPPING_CART)
    assert len(longest) <= 64
    assert timeline_event_id(7, OrderStatus.DELIVERED) == "order-7-DELIVERED"
    assert OrderStatus.DELIVERED.event_type == "orderDELIVERED"


def raw_order(**fields: Any) -> dict[str, Any]:
    body = {"externalOrderId": 42, "externalCustomerId": "C-1", "status": "delivered", "date": "2026-01-02 03:04:05",
            "totalCost": "19.90", "currency": "eur", "email": " Ann@Example.com ", "phone": "380671234567",
            "items": [{"externalItemId": "S1", "name": " Mug ", "quantity": 1, "cost": 19.9, "extra": "ignored"}],
            "additionalInfo": {"ignored": True}}
    body.update(fields)
    return body


def test_an_order_body_is_normalised():
    """Identifiers normalised, naive dates read as UTC, decimal strings as numbers, unknown fields ignored."""
    parsed = parse_orders({"orders": [raw_order()]}, Normaliser())
    assert parsed.rejected == []
    (o,) = parsed.orders
    assert o.external_order_id == "42" and o.status is OrderStatus.DELIVERED
    assert o.identity == Identity(external_id="C-1", channels=(ANN, PHONE))
    assert o.ordered_at == 1767323045000
    assert o.data["date"] == "2026-01-02T03:04:05.000Z" and o.data["totalCost"] == 19.9
    assert o.data["currency"] == "EUR" and o.data["email"] == "ann@example.com"
    assert o.data["items"] == [{"externalItemId": "S1", "name": "Mug", "quantity": 1, "cost": 19.9}]
    assert "additionalInfo" not in o.data


@pytest.mark.parametrize(("fields", "field"), [
    ({"status": "SHIPPED"}, "status"),
    ({"date": "2026-13-01"}, "date"),
    ({"date": "1969-12-31T00:00:00Z"}, "date"),
    ({"totalCost": "1e16"}, "totalCost"),
    ({"totalCost": "NaN"}, "totalCost"),
    ({"currency": "€"}, "currency"),
    ({"externalOrderId": " "}, "externalOrderId"),
    ({"email": "ann@"}, "email"),
    ({"phone": "12"}, "phone"),
    ({"externalCustomerId": None, "email": None, "phone": ""}, "externalCustomerId"),
    ({"items": [{"externalItemId": "S1", "name": "", "quantity": 1, "cost": 1}]}, "items[0].name"),
    ({"items": [{"externalItemId": "S1", "name": "n", "quantity": -1, "cost": 1}]}, "items[0].quantity"),
    ({"lastName": "x" * 257}, "lastName"),
])
def test_a_bad_field_rejects_its_order_naming_the_field(fields: dict[str, Any], field: str):
    """Each bad field is named as orders[i].field; the order beside it still parses."""
    parsed = parse_orders({"orders": [raw_order(externalOrderId="ok"), raw_order(**fields)]}, Normaliser())
    assert [o.index for o in parsed.orders] == [0]
    (rejected,) = parsed.rejected
    assert rejected.index == 1 and rejected.errors[0]["field"] == f"orders[1].{field}"


def test_the_body_must_hold_one_to_a_thousand_orders():
    """Anything else about the body itself is one 400."""
    for body in ({"orders": []}, {"orders": [raw_order()] * (MAX_ORDERS + 1)}, {"order": []}, [raw_order()]):
        with pytest.raises(ValidationFailed):
            parse_orders(body, Normaliser())


def test_a_refused_json_place_fails_its_order_alone():
    """A NUL or a key given twice inside one order rejects that order (named); outside the orders, the body."""
    body = jsonbody.decode(b'{"orders": [{"externalOrderId": "a\\u0000"}, {"status": 1, "status": 2}, 7]}')
    parsed = parse_orders(body, Normaliser())
    assert [(r.index, r.errors[0]["field"]) for r in parsed.rejected] == [
        (0, "orders[0].externalOrderId"), (1, "orders[1].status"), (2, "orders[2]")]
    assert parsed.rejected[0].external_order_id is None
    with pytest.raises(ValidationFailed):
        parse_orders(jsonbody.decode(b'{"orders": [{}], "orders": [{}]}'), Normaliser())
