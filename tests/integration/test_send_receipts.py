"""Receipts of Idempotency-Key sends are kept for ``SEND_RECEIPT_TTL_DAYS`` (7 by default) and pruned by the
worker's housekeeping; within it a repeat sends nothing, past it the key is free again. Age is injected by
back-dating the receipts, never by sleeping."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import func, select, update

from stitcher.app import WORKER, init_app
from stitcher.http_input import DB
from stitcher.store import messages as store
from stitcher.store import repo
from stitcher.store.models import SendReceipt
from tests.helpers import add_contact
from tests.integration.test_messages import client, create, outbox, send

__all__ = ["client"]
from tracker.settings import Settings

DAY_MS = 86_400_000


async def _age(client: Any, days: float) -> None:
    async with client.app[DB].transaction() as s:
        await s.execute(update(SendReceipt).values(created_at=SendReceipt.created_at - int(days * DAY_MS)))


async def _receipts(client: Any) -> int:
    async with client.app[DB].reader() as s:
        return int((await s.execute(select(func.count()).select_from(SendReceipt))).scalar_one())


async def test_housekeeping_prunes_receipts_past_their_retention(aiohttp_client, settings):
    client = await aiohttp_client(init_app(dataclasses.replace(settings, worker_enabled=False,
                                                               send_receipt_ttl_days=3)))
    await add_contact(client, channels=[{"type": "email", "value": "ann@example.com"}])
    mid = await create(client)
    old = await send(client, mid, {"locator": "ann@example.com"}, headers={"Idempotency-Key": "old"})
    await _age(client, 3.01)  # past the 3 days
    fresh = await send(client, mid, {"locator": "ann@example.com"}, headers={"Idempotency-Key": "fresh"})
    await _age(client, 2.9)  # the fresh one is now 2.9 days old: kept
    await client.app[WORKER].housekeeping()
    assert await _receipts(client) == 1
    assert await send(client, mid, {"locator": "ann@example.com"}, headers={"Idempotency-Key": "fresh"}) == fresh
    again = await send(client, mid, {"locator": "ann@example.com"}, headers={"Idempotency-Key": "old"})
    assert again["results"][0]["requestId"] != old["results"][0]["requestId"]  # the key is free again
    assert (await outbox(client, f"/api/v1/message/{mid}/outbox"))["total"] == 3


async def test_pruning_goes_in_batches_and_finds_nothing_cheaply(client, monkeypatch):
    """More old receipts than a batch all go; a sweep with nothing to prune deletes nothing."""
    db = client.app[DB]
    now = repo.now_ms()
    async with db.transaction() as s:
        s.add_all([SendReceipt(key=f"{i:064x}", answer={}, created_at=now - 10 * DAY_MS + i) for i in range(7)])
        s.add(SendReceipt(key="f" * 64, answer={}, created_at=now))
    monkeypatch.setattr(store, "PRUNE_BATCH", 3)
    assert await store.prune_receipts(db, now - DAY_MS) == 7
    assert await store.prune_receipts(db, now - DAY_MS) == 0
    assert await _receipts(client) == 1


def test_the_retention_is_a_setting_with_a_default_of_seven_days():
    assert Settings.from_env({}).send_receipt_ttl_ms == 7 * DAY_MS
    assert Settings.from_env({"SEND_RECEIPT_TTL_DAYS": "30"}).send_receipt_ttl_days == 30
