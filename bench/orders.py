"""The orders benchmark: what ``POST /api/v1/orders`` costs an order, beside the raw rows it must write.

For SQLite (a temp file) and PostgreSQL (a database of this run, created and dropped as in ``bench.stitch``),
a real ``stitcher serve`` (worker off) gets ``REQUESTS`` requests of ``ORDERS`` orders each, one at a time:

1. new: every order new, two orders per buyer, each buyer new (contact, email and phone created);
2. status: the same orders again with the next status (each order updated, one timeline entry each);
3. resend: the same requests once more (nothing changes).

Beside them, in the same run and database: the raw work of (1) — one transaction with multi-row INSERTs
of the same contacts, identifiers, identity-log entries, orders and timeline rows (no decisions, no locks,
no HTTP, no validation). Reported: p50 (min, max) per request, orders/s, the service's CPU per request
(which hardly moves with other load on the machine, unlike the wall times) and the ratio of (1) to the raw
work. No target is set for orders yet; the figures are for the README.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import aiohttp
import orjson

from bench.common import cpu_seconds
from bench.stitch import API_KEY, measure_served

ORDERS, REQUESTS = 1000, 5
STATUSES = ("INITIALIZED", "IN_PROGRESS", "DELIVERED")


def _orders(tag: str, request: int, status: str) -> list[dict[str, Any]]:
    """A shop's request: ``ORDERS`` orders of ``ORDERS // 2`` buyers with an ID, email and phone."""
    out = []
    for i in range(ORDERS):
        buyer = f"{tag}-{request}-{i // 2}"
        out.append({
            "externalOrderId": f"O-{tag}-{request}-{i}", "externalCustomerId": f"C-{buyer}", "status": status,
            "date": "2026-11-30T10:11:10+02:00", "totalCost": 59.9, "currency": "UAH",
            "email": f"{buyer}@bench.example", "phone": f"+38067{request:01d}{i // 2:06d}",
            "firstName": "Ann", "lastName": "Lee", "shipping": 5, "deliveryMethod": "courier",
            "items": [{"externalItemId": "SKU-1", "name": "Mug", "quantity": 2, "cost": 27.45}],
        })
    return out


async def _post(session: aiohttp.ClientSession, url: str, orders: list[dict[str, Any]]) -> tuple[float, Any]:
    body = orjson.dumps({"orders": orders})
    started = time.perf_counter()
    async with session.post(f"{url}/api/v1/orders", data=body, headers={"Content-Type": "application/json"},
                            auth=aiohttp.BasicAuth("bench", API_KEY)) as r:
        answer = await r.json()
        if r.status != 200 or answer["failed"]:
            raise RuntimeError(f"POST /api/v1/orders answered {r.status}: {str(answer)[:300]}")
    return time.perf_counter() - started, answer


async def _raw(db_url: str, tag: str) -> float:
    """One transaction writing the rows of one new-orders request with multi-row INSERTs: the floor."""
    from sqlalchemy import insert

    from stitcher.domain.identifiers import Normaliser
    from stitcher.store.db import Database
    from stitcher.store.models import Identifier, IdentityLog, TimelineEvent
    from stitcher.store.multirow import insert_returning_ids
    from stitcher.store.tables import CONTACTS, ORDERS

    db = Database(db_url)
    normaliser = Normaliser()
    orders = _orders(tag, 0, "INITIALIZED")
    try:
        started = time.perf_counter()
        now = int(time.time() * 1000)
        async with db.transaction() as s:
            buyers = orders[::2]
            ids = await insert_returning_ids(db, s, CONTACTS, [
                {"external_customer_id": o["externalCustomerId"], "first_name": "Ann", "last_name": "Lee",
                 "created_at": now, "updated_at": now} for o in buyers])
            await s.execute(insert(Identifier.__table__), [
                {"contact_id": cid, "kind": kind, "value": value, "device": None, "created_at": now}
                for cid, o in zip(ids, buyers, strict=True)
                for kind, value in (("email", normaliser.email(o["email"], "email")),
                                    ("sms", normaliser.phone(o["phone"], "phone")))])
            await s.execute(insert(IdentityLog.__table__), [
                {"contact_id": cid, "action": "created", "detail": {"source": "order"}, "at": now}
                for cid in ids])
            order_ids = await insert_returning_ids(db, s, ORDERS, [
                {"external_order_id": o["externalOrderId"], "contact_id": ids[i // 2], "status": o["status"],
                 "ordered_at": now, "data": o, "created_at": now, "updated_at": now} for i, o in enumerate(orders)])
            await s.execute(insert(TimelineEvent.__table__), [
                {"contact_id": ids[i // 2], "event_id": f"order-{oid}-INITIALIZED", "source": "order",
                 "type": "orderINITIALIZED", "occurred_at": now, "received_at": now, "visitor_id": None,
                 "data": {"orderId": oid}} for i, oid in enumerate(order_ids)])
        return time.perf_counter() - started
    finally:
        await db.close()


def _summary(seconds: list[float], cpu_s: float | None = None) -> dict[str, Any]:
    p50 = statistics.median(seconds)
    out = {"p50_ms": round(p50 * 1000, 1), "min_ms": round(min(seconds) * 1000, 1),
           "max_ms": round(max(seconds) * 1000, 1), "orders_per_s": round(ORDERS / p50)}
    if cpu_s is not None:
        out["service_cpu_ms_per_request"] = round(cpu_s * 1000 / len(seconds), 1)
    return out


async def measure(url: str, db_url: str, service_pid: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    phases: dict[str, list[float]] = {"new": [], "status": [], "resend": []}
    cpu: dict[str, float] = dict.fromkeys(phases, 0.0)
    raw: list[float] = []

    async def timed(phase: str, orders: list[dict[str, Any]]) -> Any:
        before = cpu_seconds(service_pid)
        seconds, answer = await _post(session, url, orders)
        cpu[phase] += cpu_seconds(service_pid) - before
        phases[phase].append(seconds)
        return answer

    async with aiohttp.ClientSession() as session:
        await _post(session, url, _orders(f"warm{tag}", 0, "INITIALIZED"))  # warm-up: connections, caches
        for request in range(REQUESTS):
            await timed("new", _orders(tag, request, STATUSES[0]))
            raw.append(await _raw(db_url, f"raw{tag}{request}"))
        for request in range(REQUESTS):
            await timed("status", _orders(tag, request, STATUSES[1]))
        for request in range(REQUESTS):
            if (await timed("resend", _orders(tag, request, STATUSES[1])))["unchanged"] != ORDERS:
                raise RuntimeError("a resend changed orders")
    result: dict[str, Any] = {name: _summary(s, cpu[name]) for name, s in phases.items()}
    result["raw_new"] = _summary(raw)
    result["ratio_new_to_raw"] = round(statistics.median(phases["new"]) / statistics.median(raw), 2)
    return result


def main() -> dict[str, Any]:
    results: dict[str, Any] = {"orders_per_request": ORDERS, "requests": REQUESTS,
                               "backends": measure_served("orders", measure)}
    results["pass"] = all("error" not in r for r in results["backends"].values())
    return results


if __name__ == "__main__":
    main()
