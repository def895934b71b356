"""The delivery worker against a real SMTP server (aiosmtpd, in the test's loop) and a local aiohttp SMS
receiver: sent, retried with backoff after a 4xx, failed on a 5xx, and each row delivered once by two workers."""

from __future__ import annotations

import asyncio
import dataclasses
import email
from collections import Counter
from collections.abc import AsyncIterator
from email.policy import default
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from stitcher.app import init_app
from stitcher.messages.delivery import Delivery
from stitcher.store.db import Database
from tests.helpers import add_contact, call, eventually, sms_webhook


class Mailbox:
    """An aiosmtpd handler keeping what it receives; it refuses ``bounce@`` for good (550) and answers the
    first DATA for ``later@`` with a 451."""

    def __init__(self) -> None:
        self.received: list[Envelope] = []
        self.deferred = 0

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        if address.startswith("bounce@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if envelope.rcpt_tos[0].startswith("later@") and not self.deferred:
            self.deferred += 1
            return "451 4.3.0 try again later"
        self.received.append(envelope)
        return "250 OK"


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[Mailbox, int]]:
    box = Mailbox()
    server = await asyncio.get_running_loop().create_server(lambda: SMTP(box, hostname="mx.test"), "127.0.0.1", 0)
    yield box, server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
async def sms_receiver(aiohttp_server: Any) -> tuple[list[dict[str, Any]], str]:
    got: list[dict[str, Any]] = []
    server = await aiohttp_server(sms_webhook(got))
    return got, str(server.make_url("/sms"))


async def _queue(client: Any, channel: str, *locators: str, body: str = "Hi {{ firstName }}") -> int:
    code, created = await call(client, "POST", "/api/v1/messages", {
        "channel": channel, "name": "n", "subject": "Hello {{ firstName }}", "from": "Shop <shop@example.com>",
        "body": body})
    assert code == 200, created
    code, sent = await call(client, "POST", f"/api/v1/message/{created['id']}/smartsend",
                            {"recipients": [{"locator": loc} for loc in locators]})
    assert code == 200 and all(r["status"] == "OK" for r in sent["results"]), sent
    return int(created["id"])


async def _states(client: Any, message_id: int) -> dict[str, tuple[str, int, str | None]]:
    code, page = await call(client, "GET", f"/api/v1/message/{message_id}/outbox")
    assert code == 200
    return {o["address"]: (o["state"], o["attempts"], o["error"]) for o in page["outbox"]}


async def test_the_worker_delivers_queued_email_over_smtp(aiohttp_client, settings, smtp):
    """With SMTP_URL set, queued email reaches the SMTP server with its rendered headers and body; a 5xx
    refusal fails its row for good, a 4xx is retried after a backoff and then sent."""
    box, port = smtp
    client = await aiohttp_client(init_app(dataclasses.replace(settings, smtp_url=f"smtp://127.0.0.1:{port}")))
    for address in ("ann@example.com", "bounce@example.com", "later@example.com"):
        await add_contact(client, firstName="Ann", channels=[{"type": "email", "value": address}])
    mid = await _queue(client, "email", "ann@example.com", "bounce@example.com", "later@example.com")
    states = await eventually(lambda: _states(client, mid),
                              lambda s: all(v[0] != "queued" for v in s.values()), 20)
    assert states["ann@example.com"] == ("sent", 1, None)
    assert states["bounce@example.com"][0] == "failed" and "550" in str(states["bounce@example.com"][2])
    assert states["later@example.com"] == ("sent", 2, None)
    mail = {e.rcpt_tos[0]: email.message_from_bytes(e.content, policy=default) for e in box.received}
    assert set(mail) == {"ann@example.com", "later@example.com"}
    ann = mail["ann@example.com"]
    assert ann["Subject"] == "Hello Ann" and ann["From"] == "Shop <shop@example.com>"
    assert ann["To"] == "ann@example.com" and ann["X-Stitcher-Request-Id"]
    assert ann.get_body(("html",)).get_content().strip() == "Hi Ann"


async def test_sms_stays_queued_without_a_webhook_and_is_posted_with_one(aiohttp_client, settings, sms_receiver):
    """Without SMS_WEBHOOK_URL an SMS stays queued; with it the worker posts it and marks it sent."""
    got, url = sms_receiver
    plain = await aiohttp_client(init_app(settings))
    await add_contact(plain, firstName="Bob", channels=[{"type": "sms", "value": "+380671234567"}])
    mid = await _queue(plain, "sms", "+380671234567")
    await asyncio.sleep(0.3)
    assert (await _states(plain, mid))["+380671234567"][0] == "queued"
    await plain.close()
    client = await aiohttp_client(init_app(dataclasses.replace(settings, sms_webhook_url=url)))
    states = await eventually(lambda: _states(client, mid), lambda s: s["+380671234567"][0] == "sent", 10)
    assert states["+380671234567"] == ("sent", 1, None)
    assert [(g["to"], g["text"]) for g in got] == [("+380671234567", "Hi Bob")]


async def test_two_workers_deliver_each_row_once(client, settings, smtp):
    """Two delivery workers (as in two service processes) over one database: every queued email arrives
    exactly once (rows are claimed with FOR UPDATE SKIP LOCKED on PostgreSQL and leased)."""
    box, port = smtp
    addresses = [f"u{i}@example.com" for i in range(40)]
    for address in addresses:
        await add_contact(client, channels=[{"type": "email", "value": address}])
    await _queue(client, "email", *addresses)
    dbs = [Database(settings.effective_database_url) for _ in range(2)]
    workers = [Delivery(db, f"smtp://127.0.0.1:{port}", None) for db in dbs]
    try:
        for _ in range(10):
            if sum(await asyncio.gather(*(w.deliver_once() for w in workers))) == 0:
                break
    finally:
        for db in dbs:
            await db.close()
    assert Counter(e.rcpt_tos[0] for e in box.received) == Counter(addresses)
