"""The exported tables, defined once for every target: their columns (PostgreSQL and BigQuery types come
from the same definition) and how a source row becomes an exported one. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """A column's type, named as BigQuery names it."""

    INTEGER = "INTEGER"
    FLOAT = "FLOAT"
    STRING = "STRING"
    TIMESTAMP = "TIMESTAMP"
    JSON = "JSON"


POSTGRES_TYPES = {Kind.INTEGER: "bigint", Kind.FLOAT: "double precision", Kind.STRING: "text",
                  Kind.TIMESTAMP: "timestamptz", Kind.JSON: "jsonb"}


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    required: bool = False


@dataclass(frozen=True)
class ExportTable:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def bigquery_schema(self) -> list[dict[str, str]]:
        """The table's schema as BigQuery's JSON schema files spell it."""
        return [{"name": c.name, "type": c.kind.value, "mode": "REQUIRED" if c.required else "NULLABLE"}
                for c in self.columns]


def _c(name: str, kind: Kind = Kind.STRING, required: bool = False) -> Column:
    return Column(name, kind, required)


_I, _F, _T, _J = Kind.INTEGER, Kind.FLOAT, Kind.TIMESTAMP, Kind.JSON
CONTACTS = ExportTable("contacts", (
    _c("id", _I, True), _c("external_customer_id"), _c("first_name"), _c("last_name"), _c("language_code"),
    _c("email"), _c("sms"), _c("channels", _J), _c("fields", _J), _c("address", _J), _c("groups", _J),
    _c("created_at", _T, True), _c("updated_at", _T, True), _c("deleted_at", _T)), ("id",))
EVENTS = ExportTable("events", (
    _c("id", _I, True), _c("contact_id", _I, True), _c("event_id", required=True), _c("source", required=True),
    _c("type", required=True), _c("occurred_at", _T, True), _c("received_at", _T, True), _c("visitor_id"),
    _c("data", _J)), ("id",))
ORDERS = ExportTable("orders", (
    _c("id", _I, True), _c("contact_id", _I, True), _c("external_order_id", required=True),
    _c("status", required=True), _c("ordered_at", _T, True), _c("total_cost", _F), _c("currency"),
    _c("data", _J), _c("created_at", _T, True), _c("updated_at", _T, True)), ("id",))
ORDER_ITEMS = ExportTable("order_items", (
    _c("order_id", _I, True), _c("position", _I, True), _c("contact_id", _I, True), _c("external_item_id"),
    _c("name"), _c("quantity", _F), _c("cost", _F), _c("data", _J)), ("order_id", "position"))
TABLES = (CONTACTS, EVENTS, ORDERS, ORDER_ITEMS)
BY_NAME = {t.name: t for t in TABLES}


def _time(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def _first(channels: Sequence[Mapping[str, str]], kind: str) -> str | None:
    return next((c["value"] for c in channels if c["type"] == kind), None)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def contact(row: Mapping[str, Any], channels: Sequence[Mapping[str, str]], groups: Sequence[str]) -> dict[str, Any]:
    return {"id": row["id"], "external_customer_id": row["external_customer_id"], "first_name": row["first_name"],
            "last_name": row["last_name"], "language_code": row["language_code"],
            "email": _first(channels, "email"), "sms": _first(channels, "sms"), "channels": list(channels),
            "fields": row["fields"], "address": row["address"], "groups": list(groups),
            "created_at": _time(row["created_at"]), "updated_at": _time(row["updated_at"]),
            "deleted_at": _time(row["deleted_at"])}


def event(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "contact_id": row["contact_id"], "event_id": row["event_id"], "source": row["source"],
            "type": row["type"], "occurred_at": _time(row["occurred_at"]),
            "received_at": _time(row["received_at"]), "visitor_id": row["visitor_id"], "data": row["data"]}


def order(row: Mapping[str, Any]) -> dict[str, Any]:
    data = row["data"]
    currency = data.get("currency")
    return {"id": row["id"], "contact_id": row["contact_id"], "external_order_id": row["external_order_id"],
            "status": row["status"], "ordered_at": _time(row["ordered_at"]),
            "total_cost": _number(data.get("totalCost")), "currency": currency if isinstance(currency, str) else None,
            "data": data, "created_at": _time(row["created_at"]), "updated_at": _time(row["updated_at"])}


def order_items(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    items = row["data"].get("items") or []
    return [{"order_id": row["id"], "position": i, "contact_id": row["contact_id"],
             "external_item_id": item.get("externalItemId"), "name": item.get("name"),
             "quantity": _number(item.get("quantity")), "cost": _number(item.get("cost")), "data": item}
            for i, item in enumerate(items) if isinstance(item, Mapping)]
