"""``POST /api/v1/orders`` bodies into ``OrderCommand``s: the body must be sound, each order is judged alone.

A body that is not ``{"orders": [1..1000 objects]}`` is a 400; inside it, an order with a bad field fails
alone (``Rejected``, naming each field as ``orders[i].field``) and the others go on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from stitcher import jsonbody
from stitcher.domain.errors import InvalidIdentifier, ValidationFailed
from stitcher.domain.identifiers import IdentifierKind, Identity, Normaliser
from stitcher.domain.instants import BadInstant, read_instant
from stitcher.domain.orders import OrderCommand, OrderStatus

MAX_ORDERS = 1000
MAX_ITEMS = 1000
MAX_ERRORS = 20  # refused places named per order (and outside the orders)
_ORDER_PLACE = re.compile(r"orders\[(\d+)\]")
MAX_AMOUNT = Decimal(10) ** 15
# free text the platform names, with the longest value each may hold (characters)
_TEXT = {"statusDescription": 1024, "storeId": 256, "deliveryMethod": 256, "paymentMethod": 256,
         "deliveryAddress": 1024, "source": 256, "restoreUrl": 2048}
_AMOUNTS = ("shipping", "discount", "taxes")
_ITEM_TEXT = {"url": 2048, "imageUrl": 2048, "category": 1024, "description": 4096}
_NAMES = {"firstName": 256, "lastName": 256}


@dataclass(frozen=True)
class Rejected:
    """An order that failed alone: its index in ``orders`` and each bad field."""

    index: int
    external_order_id: str | None
    errors: list[dict[str, str]]

    def body(self) -> dict[str, Any]:
        return {"index": self.index, "externalOrderId": self.external_order_id,
                "error": "; ".join(f"{e['field']}: {e['message']}" for e in self.errors), "errors": self.errors}


class OrdersRejected(ValidationFailed):
    """Every order of the request failed (400): each bad field under ``errors``, each order under ``failed``."""

    def __init__(self, rejected: list[Rejected]) -> None:
        super().__init__([e for r in rejected for e in r.errors])
        self.message = f"all {len(rejected)} orders were rejected; " + self.message
        self.extra = {**self.extra, "failed": [r.body() for r in rejected]}


@dataclass
class Parsed:
    """The request's orders: the valid ones, the rejected ones, and blank identifiers ignored per order."""

    orders: list[OrderCommand] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    ignored: dict[int, list[str]] = field(default_factory=dict)


def parse_orders(payload: Any, normaliser: Normaliser) -> Parsed:
    """Read a ``jsonbody.decode``d ``{"orders": [...]}``; raises ``ValidationFailed`` (400) only for the
    body's own shape or a refused place outside the orders. An order holding a refused place (a NUL, a
    key given twice, a number past 64 bits, nesting past the limit) fails alone, naming it."""
    refused = _refused_by_order(payload)
    if not isinstance(payload, Mapping):
        raise ValidationFailed([{"field": "body", "message": "must be a JSON object with `orders`"}])
    orders = payload.get("orders")
    if not isinstance(orders, list) or not 1 <= len(orders) <= MAX_ORDERS:
        raise ValidationFailed([{"field": "orders", "message": f"must be a list of 1 to {MAX_ORDERS} orders"}])
    parsed = Parsed()
    channels: dict[tuple[IdentifierKind, Any], str | InvalidIdentifier] = {}  # a buyer's repeat orders
    for i, raw in enumerate(orders):
        if i in refused:  # not read: what it holds cannot be stored
            external_id = raw.get("externalOrderId") if isinstance(raw, Mapping) else None
            parsed.rejected.append(Rejected(i, external_id if isinstance(external_id, str) and
                                            jsonbody.text_problem(external_id) is None else None, refused[i]))
            continue
        reader = _OrderReader(i, normaliser, channels)
        command = reader.read(raw)
        if command is None:
            parsed.rejected.append(Rejected(i, reader.external_order_id, reader.errors))
        else:
            parsed.orders.append(command)
            if reader.ignored:
                parsed.ignored[i] = reader.ignored
    return parsed


def _refused_by_order(payload: Any) -> dict[int, list[dict[str, str]]]:
    """``jsonbody.problems`` of the body, by order index; a refused place outside the orders is a 400."""
    by_order: dict[int, list[dict[str, str]]] = {}
    outside: list[dict[str, str]] = []
    for where, message in jsonbody.problems(payload):
        match = _ORDER_PLACE.match(where)
        if match is None:
            outside.append({"field": where or "body", "message": message})
            if len(outside) == MAX_ERRORS:
                break
        elif len(errors := by_order.setdefault(int(match[1]), [])) < MAX_ERRORS:
            errors.append({"field": where, "message": message})
    if outside:
        raise ValidationFailed(outside)
    return by_order


class _OrderReader:
    """Reads one order, collecting every bad field (``orders[i].field``) rather than stopping at the first."""

    def __init__(self, index: int, normaliser: Normaliser,
                 channels: dict[tuple[IdentifierKind, Any], str | InvalidIdentifier]) -> None:
        self.index = index
        self.normaliser = normaliser
        self.channels = channels  # normalised channel values of the request so far (validation is slow)
        self.prefix = f"orders[{index}]."
        self.errors: list[dict[str, str]] = []
        self.ignored: list[str] = []
        self.external_order_id: str | None = None

    def bad(self, where: str, message: str) -> None:
        self.errors.append({"field": self.prefix + where, "message": message})

    def read(self, raw: Any) -> OrderCommand | None:
        if not isinstance(raw, Mapping):
            self.errors.append({"field": f"orders[{self.index}]", "message": "must be an order object"})
            return None
        data: dict[str, Any] = {}
        self.external_order_id = self._external_id(raw, "externalOrderId", required=True)
        status = self._status(raw.get("status"))
        ordered_at = self._date(raw.get("date"))
        identity = self._identity(raw, data)
        total = self._amount(raw, "totalCost", required=True)
        currency = self._currency(raw.get("currency"))
        names = {key: self._text(raw, key, limit) for key, limit in _NAMES.items()}
        for key, limit in _TEXT.items():
            if (value := self._text(raw, key, limit)) is not None:
                data[key] = value
        for key in _AMOUNTS:
            if (amount := self._amount(raw, key)) is not None:
                data[key] = amount
        items = self._items(raw.get("items"))
        if self.errors:
            return None
        assert self.external_order_id is not None and status is not None and ordered_at is not None
        data |= {"externalOrderId": self.external_order_id, "status": status.value,
                 "date": _iso(ordered_at), "totalCost": total, "currency": currency, "items": items}
        data |= {key: value for key, value in names.items() if value is not None}
        return OrderCommand(self.index, self.external_order_id, identity, status, ordered_at,
                            dict(sorted(data.items())), names["firstName"], names["lastName"])

    def _blank(self, value: Any) -> bool:
        """Absent, empty or a placeholder (``" "``, ``"null"``, ``0``): what shops send for "no value"."""
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        return value is None or (isinstance(value, str) and (
            not value.strip() or value.strip().lower() in self.normaliser.placeholders))

    def _external_id(self, raw: Mapping[str, Any], key: str, *, required: bool = False,
                     where: str = "") -> str | None:
        value = raw.get(key)
        if not required and self._blank(value):
            if value is not None:
                self.ignored.append(self.prefix + where + key)
            return None
        try:
            return self.normaliser.external_id(value, key)
        except InvalidIdentifier as exc:
            self.bad(where + key, exc.errors[0]["message"])
            return None

    def _identity(self, raw: Mapping[str, Any], data: dict[str, Any]) -> Identity:
        before = len(self.errors)
        external_id = self._external_id(raw, "externalCustomerId")
        channels: list[tuple[IdentifierKind, str]] = []
        for key, kind in (("email", IdentifierKind.EMAIL), ("phone", IdentifierKind.SMS)):
            value = raw.get(key)
            if self._blank(value):
                if value is not None:
                    self.ignored.append(self.prefix + key)
                continue
            memo = (kind, value) if isinstance(value, str | int) and not isinstance(value, bool) else None
            normalised = self.channels.get(memo) if memo is not None else None
            if normalised is None:
                try:
                    normalised = self.normaliser.channel(kind, value, key)
                except InvalidIdentifier as exc:
                    normalised = exc
                if memo is not None:
                    self.channels[memo] = normalised
            if isinstance(normalised, InvalidIdentifier):
                self.bad(key, normalised.errors[0]["message"])
                continue
            channels.append((kind, normalised))
            data[key] = normalised
        if external_id is not None:
            data["externalCustomerId"] = external_id
        elif not channels and len(self.errors) == before:
            self.bad("externalCustomerId", "an order needs an externalCustomerId, email or phone of its buyer")
        return Identity(external_id=external_id, channels=tuple(channels))

    def _status(self, value: Any) -> OrderStatus | None:
        try:
            return OrderStatus(value.strip().upper() if isinstance(value, str) else value)
        except ValueError:
            self.bad("status", f"must be one of {', '.join(s.value for s in OrderStatus)}")
            return None

    def _date(self, value: Any) -> int | None:
        """ISO 8601 (``2017-05-14T10:11:10.7022176+03:00``; without an offset it is UTC) → Unix ms."""
        try:
            return read_instant(value)
        except BadInstant as exc:
            self.bad("date", str(exc))
            return None

    def _number(self, value: Any, where: str, *, required: bool) -> int | float | None:
        """A non-negative amount or count, as a JSON number or a decimal string (``"19.99"``)."""
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                self.bad(where, "is required")
            return None
        message = f"must be a number from 0 to {MAX_AMOUNT:.0e}"
        if isinstance(value, bool) or not isinstance(value, int | float | str) or \
                (isinstance(value, str) and len(value) > 40):
            self.bad(where, message)
            return None
        try:
            amount = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
        except InvalidOperation:
            self.bad(where, message)
            return None
        if not amount.is_finite() or not 0 <= amount <= MAX_AMOUNT:
            self.bad(where, message)
            return None
        if isinstance(value, int | float):
            return value
        return int(amount) if amount == amount.to_integral_value() else float(amount)

    def _amount(self, raw: Mapping[str, Any], key: str, *, required: bool = False) -> int | float | None:
        return self._number(raw.get(key), key, required=required)

    def _currency(self, value: Any) -> str | None:
        if not isinstance(value, str) or not (text := value.strip()).isascii() or len(text) != 3 \
                or not text.isalpha():
            self.bad("currency", "must be a three-letter ISO 4217 code, e.g. USD, EUR, UAH")
            return None
        return text.upper()

    def _text(self, raw: Mapping[str, Any], key: str, limit: int, where: str = "") -> str | None:
        """Optional free text, trimmed; empty is absent."""
        value = raw.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            value = str(value)  # a store id or a house number sent as a number
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > limit:
            self.bad(where + key, f"must be a string of at most {limit} characters")
            return None
        return value.strip() or None

    def _items(self, value: Any) -> list[dict[str, Any]]:
        if value is None:
            return []
        if not isinstance(value, list) or len(value) > MAX_ITEMS:
            self.bad("items", f"must be a list of at most {MAX_ITEMS} items")
            return []
        items = []
        for j, raw in enumerate(value):
            where = f"items[{j}]."
            if not isinstance(raw, Mapping):
                self.bad(f"items[{j}]", "must be an item object")
                continue
            item: dict[str, Any] = {
                "externalItemId": self._external_id(raw, "externalItemId", required=True, where=where)}
            before = len(self.errors)
            if (name := self._text(raw, "name", 1024, where)) is None and len(self.errors) == before:
                self.bad(where + "name", "is required")
            item |= {"name": name,
                     "quantity": self._number(raw.get("quantity"), where + "quantity", required=True),
                     "cost": self._number(raw.get("cost"), where + "cost", required=True)}
            for key, limit in _ITEM_TEXT.items():
                if (text := self._text(raw, key, limit, where)) is not None:
                    item[key] = text
            items.append(item)
        return items


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
