"""The delivery worker against hostile receivers (issue 10): an SMTP server that defers then accepts, refuses,
drops the connection in the middle of DATA, hangs, is absent or takes less data than the message; an SMS
webhook answering 500, redirecting, sending a huge body, hanging or not listening; a huge rendered body;
two workers racing one row. Each row ends in a correct state — queued with a backoff and the error, sent, or
failed with the error — never lost, never sent twice, and the worker never crashes. The clock is injected:
a row is made due again by moving its ``next_attempt_at``, never by sleeping through a backoff."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from email.policy import default
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import update

from stitcher.app import init_app
from stitcher.http_input import DB
from stitcher.messages import delivery as delivery_module
from stitcher.messages.delivery import Delivery
from stitcher.store import repo
from stitcher.store.db import Contention, Database
from stitcher.store.models import OutboxEntry
from tests.helpers import add_contact, call

TIMEOUT_S = 0.5  # a hanging receiver is given up on after this (the production default is 30 s)


@pytest.fixture
async def client(aiohttp_client: Any, settings: Any) -> Any:
    """The service without its workers: the tests run the delivery rounds themselves."""
    return await aiohttp_client(init_app(dataclasses.replace(settings, worker_enabled=False)))


async def queue(client: Any, channel: str, *locators: str, body: str = "Hi {{ firstName }}") -> int:
    """A message of ``channel`` sent to each locator (contacts created as needed): its id."""
    kind = "email" if channel == "email" else "sms"
    for locator in locators:
        await add_contact(client, firstName="Ann", channels=[{"type": kind, "value": locator}])
    code, created = await call(client, "POST", "/api/v1/messages", {
        "channel": channel, "name": "n", "subject": "Hello", "from": "Shop <shop@example.com>", "body": body})
    assert code == 200, created
    code, sent = await call(client, "POST", f"/api/v1/message/{created['id']}/smartsend",
                            {"recipients": [{"locator": loc} for loc in locators]})
    assert code == 200 and all(r["status"] == "OK" for r in sent["results"]), sent
    return int(created["id"])


async def rows(client: Any, message_id: int) -> list[dict[str, Any]]:
    code, page = await call(client, "GET", f"/api/v1/message/{message_id}/outbox")
    assert code == 200
    return list(page["outbox"])


async def due_now(client: Any) -> None:
    """The injected clock: every queued row's backoff is over."""
    async with client.app[DB].transaction() as s:
        await s.execute(update(OutboxEntry).where(OutboxEntry.state == "queued")  # type: ignore[arg-type]
                        .values(next_attempt_at=0))


async def next_attempt_in(client: Any, message_id: int) -> int:
    async with client.app[DB].reader() as s:
        row = (await s.execute(OutboxEntry.__table__.select().where(  # type: ignore[attr-defined]
            OutboxEntry.__table__.c.message_id == message_id))).one()  # type: ignore[attr-defined]
    return int(row.next_attempt_at) - repo.now_ms()


@contextlib.asynccontextmanager
async def worker(client: Any, smtp_port: int | None = None, webhook: str | None = None,
                 **kw: Any) -> AsyncIterator[Delivery]:
    d = Delivery(client.app[DB], f"smtp://127.0.0.1:{smtp_port}" if smtp_port else None, webhook,
                 timeout_s=TIMEOUT_S, **kw)
    try:
        yield d
    finally:
        await d.close()


# ---------------------------------------------------------------- SMTP receivers


class Box:
    """An aiosmtpd handler: what it got, and a scripted answer to each DATA (then ``250 OK``)."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.received: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.answers:
            return self.answers.pop(0)
        self.received.append(envelope)
        return "250 OK"


@contextlib.asynccontextmanager
async def smtp_server(box: Box, **kw: Any) -> AsyncIterator[int]:
    server = await asyncio.get_running_loop().create_server(lambda: SMTP(box, hostname="mx.test", **kw),
                                                            "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def scripted_smtp(on_data: Callable[[asyncio.StreamWriter], Awaitable[None]] | None,
                        greet: bool = True) -> AsyncIterator[int]:
    """A bare SMTP server that greets (or hangs), says 250 to every command and, once DATA's text starts
    arriving, hands the connection to ``on_data`` (drop it, hang)."""
    held: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        if not greet:
            await asyncio.sleep(3600)
        writer.write(b"220 mx.test ESMTP\r\n")
        while line := await reader.readline():
            command = line.strip().upper()
            if command.startswith(b"EHLO"):
                writer.write(b"250-mx.test\r\n250 8BITMIME\r\n")
            elif command == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                await reader.read(100)
                assert on_data is not None
                await on_data(writer)
                return
            else:
                writer.write(b"250 OK\r\n")
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for w in held:
            w.close()
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


async def _drop(writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()


async def _trickle(writer: asyncio.StreamWriter) -> None:
    """Answer the end of DATA, never — but keep the connection busy with a slow stream of continuation
    lines, each well within one command's timeout."""
    for _ in range(3600):
        await asyncio.sleep(TIMEOUT_S / 2)
        writer.write(b"250-still working\r\n")
        await writer.drain()


async def _hang(writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_smtp_4xx_twice_then_2xx_is_sent_once_after_backing_off(client):
    mid = await queue(client, "email", "ann@example.com")
    box = Box("451 4.3.0 try later", "421 4.7.0 busy")
    async with smtp_server(box) as port, worker(client, port, backoff_ms=60_000) as w:
        assert await w.deliver_once() == 1
        [row] = await rows(client, mid)
        assert (row["state"], row["attempts"]) == ("queued", 1) and "451" in row["error"]
        assert 50_000 < await next_attempt_in(client, mid) <= 60_000  # backed off, not retried at once
        assert await w.deliver_once() == 0  # not due yet
        await due_now(client)
        await w.deliver_once()
        [row] = await rows(client, mid)
        assert (row["state"], row["attempts"]) == ("queued", 2) and "421" in row["error"]
        assert 110_000 < await next_attempt_in(client, mid) <= 120_000  # exponential
        await due_now(client)
        await w.deliver_once()
    [row] = await rows(client, mid)
    assert (row["state"], row["attempts"], row["error"]) == ("sent", 3, None)
    assert [e.rcpt_tos for e in box.received] == [["ann@example.com"]]


@pytest.mark.parametrize("answer", ["554 5.7.1 rejected as spam", "552 5.3.4 message too big"])
async def test_smtp_5xx_fails_the_row_with_the_reply(client, answer):
    mid = await queue(client, "email", "ann@example.com")
    async with smtp_server(Box(answer)) as port, worker(client, port) as w:
        await w.deliver_once()
        await due_now(client)
        assert await w.deliver_once() == 0  # failed rows are never taken again
    [row] = await rows(client, mid)
    assert (row["state"], row["attempts"]) == ("failed", 1) and answer[:3] in row["error"], row


async def test_smtp_that_takes_less_than_a_huge_body_fails_it(client):
    """A 256 Ki-character render is stored and offered whole; a server with a smaller limit refuses it (552)."""
    mid = await queue(client, "email", "ann@example.com", body="{{ 'x' * 200000 }}{{ '\\n' * 1000 }}end")
    [row] = await rows(client, mid)
    assert len(row["body"]) == 201_003
    async with smtp_server(Box(), data_size_limit=100_000) as port, worker(client, port) as w:
        await w.deliver_once()
    [row] = await rows(client, mid)
    assert row["state"] == "failed" and "552" in row["error"], row


async def test_a_huge_body_is_delivered_whole(client):
    box = Box()
    mid = await queue(client, "email", "ann@example.com", body="<p>{{ 'é' * 250000 }}</p>")
    async with smtp_server(box) as port, worker(client, port) as w:
        await w.deliver_once()
    [row] = await rows(client, mid)
    assert row["state"] == "sent", row
    mail = email.message_from_bytes(box.received[0].content, policy=default)
    assert mail.get_body(("html",)).get_content().strip() == "<p>" + "é" * 250000 + "</p>"


@pytest.mark.parametrize(("script", "greet"), [(_drop, True), (_hang, True), (None, False), (_trickle, True)],
                         ids=["drop-mid-data", "hang-after-data", "hang-at-greeting", "trickle"])
async def test_smtp_that_drops_or_hangs_leaves_the_row_queued_with_the_error(client, script, greet):
    mid = await queue(client, "email", "ann@example.com")
    async with scripted_smtp(script, greet) as port, worker(client, port) as w:
        assert await asyncio.wait_for(w.deliver_once(), 10) == 1
    [row] = await rows(client, mid)
    assert (row["state"], row["attempts"]) == ("queued", 1) and row["error"], row
    assert await next_attempt_in(client, mid) > 0
    box = Box()  # the server is back: the next due round sends it, once
    async with smtp_server(box) as port, worker(client, port) as w:
        await due_now(client)
        await w.deliver_once()
    assert (await rows(client, mid))[0]["state"] == "sent" and len(box.received) == 1


async def test_smtp_absent_is_retried_then_failed_after_the_last_attempt(client, monkeypatch):
    monkeypatch.setattr(delivery_module, "MAX_ATTEMPTS", 3)
    mid = await queue(client, "email", "ann@example.com")
    async with worker(client, free_port()) as w:
        for attempt in (1, 2, 3):
            await due_now(client)
            assert await w.deliver_once() == 1
            [row] = await rows(client, mid)
            assert row["attempts"] == attempt and row["error"], row
    assert row["state"] == "failed" and row["error"].startswith("gave up after 3 attempts"), row


async def test_an_unexpected_error_while_sending_is_recorded_not_a_crash(client, monkeypatch):
    """Whatever a send raises ends its row's attempt with the error text and a backoff; the round goes on
    with the other rows, and the worker keeps running."""
    mid = await queue(client, "email", "ann@example.com", "bob@example.com")

    def broken(row: OutboxEntry) -> Any:
        if row.address.startswith("bob"):
            raise RuntimeError("boom")
        return real(row)

    real = delivery_module.email_of
    monkeypatch.setattr(delivery_module, "email_of", broken)
    box = Box()
    async with smtp_server(box) as port, worker(client, port) as w:
        assert await w.deliver_once() == 2
    states = {r["address"]: (r["state"], r["attempts"], r["error"]) for r in await rows(client, mid)}
    assert states["ann@example.com"] == ("sent", 1, None)
    assert states["bob@example.com"][:2] == ("queued", 1) and "boom" in states["bob@example.com"][2]


async def test_a_collision_writing_the_outcome_is_retried_not_a_resend(client, monkeypatch):
    """The send went through and writing ``sent`` collides with another transaction (SQLite's busy writer, a
    PostgreSQL serialization failure): the write is retried — the row is not left leased to be sent again."""
    mid = await queue(client, "email", "ann@example.com")
    real = delivery_module.store.set_outcome
    collisions = [Contention("database is locked")]

    async def colliding(s: Any, row_id: int, values: Any) -> None:
        if collisions:
            raise collisions.pop()
        await real(s, row_id, values)

    monkeypatch.setattr(delivery_module.store, "set_outcome", colliding)
    box = Box()
    async with smtp_server(box) as port, worker(client, port) as w:
        await w.deliver_once()
        await due_now(client)
        assert await w.deliver_once() == 0
    [row] = await rows(client, mid)
    assert (row["state"], row["attempts"]) == ("sent", 1) and len(box.received) == 1


# ---------------------------------------------------------------- SMS webhook


@contextlib.asynccontextmanager
async def webhook(aiohttp_server: Any, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    got: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.StreamResponse:
        got.append({"method": request.method, "path": request.path,
                    "body": await request.json() if request.can_read_body else None})
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receive)
    server = await aiohttp_server(app)
    yield str(server.make_url("/sms")), got


async def test_sms_webhook_500_is_retried_then_sent(client, aiohttp_server):
    mid = await queue(client, "sms", "+380671234567")
    answers = [500, 202]

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=answers.pop(0))

    async with webhook(aiohttp_server, handler) as (url, got), worker(client, webhook=url) as w:
        await w.deliver_once()
        [row] = await rows(client, mid)
        assert (row["state"], row["attempts"]) == ("queued", 1) and "500" in row["error"], row
        await due_now(client)
        await w.deliver_once()
    [row] = await rows(client, mid)
    assert (row["state"], row["attempts"], row["error"]) == ("sent", 2, None)
    assert len(got) == 2 and got[1]["body"]["to"] == "+380671234567"


@pytest.mark.parametrize("code", [301, 302, 303, 307])
async def test_sms_webhook_redirect_is_not_followed_and_not_taken_as_sent(client, aiohttp_server, code):
    """A redirect would turn the POST into a GET of another URL (or post the text elsewhere) and a 200 there
    would mark an SMS sent that no one received: it is an error, retried."""
    mid = await queue(client, "sms", "+380671234567")

    async def redirect(request: web.Request) -> web.StreamResponse:
        if request.path == "/sms":
            return web.Response(status=code, headers={"Location": "/elsewhere"})
        return web.Response(status=200)

    async with webhook(aiohttp_server, redirect) as (url, got), worker(client, webhook=url) as w:
        await w.deliver_once()
    [row] = await rows(client, mid)
    assert (row["state"], row["attempts"]) == ("queued", 1) and str(code) in row["error"], row
    assert [g["path"] for g in got] == ["/sms"]


async def test_sms_webhook_answering_a_huge_body_is_not_read(client, aiohttp_server):
    """A 2xx with a 64 MiB body is a delivery (the body is not read into memory); a 500 with one, an error."""
    mid = await queue(client, "sms", "+380671234567", "+380671234568")

    async def huge(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        response = web.StreamResponse(status=200 if body["to"].endswith("7") else 500)
        response.content_length = 64 * 1024 * 1024
        await response.prepare(request)
        chunk = b"x" * (1024 * 1024)
        with contextlib.suppress(ConnectionError):
            for _ in range(64):
                await response.write(chunk)
        return response

    async with webhook(aiohttp_server, huge) as (url, _), worker(client, webhook=url) as w:
        await asyncio.wait_for(w.deliver_once(), 10)
    states = {r["address"]: (r["state"], r["attempts"]) for r in await rows(client, mid)}
    assert states == {"+380671234567": ("sent", 1), "+380671234568": ("queued", 1)}


async def test_a_huge_sms_is_posted_whole(client, aiohttp_server):
    """250,000 Cyrillic letters are posted as UTF-8 JSON (500 KB, under a receiver's usual 1 MiB limit; the
    stdlib's \\u-escapes made it 1.5 MB, which aiohttp's default receiver refused with a 413)."""
    mid = await queue(client, "sms", "+380671234567", body="{{ 'й' * 250000 }}")

    async def ok(request: web.Request) -> web.StreamResponse:
        return web.Response(status=202)

    async with webhook(aiohttp_server, ok) as (url, got), worker(client, webhook=url) as w:
        await w.deliver_once()
    assert (await rows(client, mid))[0]["state"] == "sent"
    assert got[0]["body"]["text"] == "й" * 250000


async def test_sms_webhook_hanging_or_absent_leaves_the_row_queued(client, aiohttp_server):
    mid = await queue(client, "sms", "+380671234567")

    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(3600)
        return web.Response()

    async with webhook(aiohttp_server, hang) as (url, _), worker(client, webhook=url) as w:
        assert await asyncio.wait_for(w.deliver_once(), 10) == 1
    [row] = await rows(client, mid)
    assert (row["state"], row["attempts"]) == ("queued", 1) and "Timeout" in row["error"], row
    async with worker(client, webhook=f"http://127.0.0.1:{free_port()}/sms") as w:
        await due_now(client)
        assert await w.deliver_once() == 1
    [row] = await rows(client, mid)
    assert (row["state"], row["attempts"]) == ("queued", 2) and "Connect" in row["error"], row


# ---------------------------------------------------------------- racing workers


async def test_two_workers_racing_one_row_send_it_once(client, settings):
    """Two workers (own database pools, as two processes) claiming the same due row at the same moment, many
    times over: each row is sent exactly once and ends ``sent`` with one attempt."""
    box = Box()
    addresses = [f"r{i}@example.com" for i in range(12)]
    mid = await queue(client, "email", *addresses)
    dbs = [Database(settings.effective_database_url) for _ in range(2)]
    try:
        async with smtp_server(box) as port:
            workers = [Delivery(db, f"smtp://127.0.0.1:{port}", None, timeout_s=TIMEOUT_S) for db in dbs]
            for _ in range(4):
                await asyncio.gather(*(w.deliver_once() for w in workers))
                await due_now(client)
            for w in workers:
                await w.close()
    finally:
        for db in dbs:
            await db.close()
    assert sorted(e.rcpt_tos[0] for e in box.received) == sorted(addresses)
    assert {(r["state"], r["attempts"]) for r in await rows(client, mid)} == {("sent", 1)}


@pytest.mark.parametrize("utf8", [True, False], ids=["smtputf8", "ascii-only"])
async def test_non_ascii_addresses(client, utf8):
    """An internationalised domain is sent in its IDNA form (any server takes it); a non-ASCII local part is
    sent where the server speaks SMTPUTF8, and fails its row for good where it does not (retrying cannot change
    what the server supports), saying why."""
    box = Box()
    mid = await queue(client, "email", "аня@example.com", "ann@пример.укр")
    async with smtp_server(box, enable_SMTPUTF8=utf8) as port, worker(client, port) as w:
        await w.deliver_once()
    states = {r["address"]: (r["state"], r["attempts"], r["error"]) for r in await rows(client, mid)}
    if utf8:
        assert states["аня@example.com"] == ("sent", 1, None)
    else:
        assert states["аня@example.com"][:2] == ("failed", 1) and "SMTPUTF8" in states["аня@example.com"][2]
    assert states["ann@пример.укр"] == ("sent", 1, None)
    assert ["ann@xn--e1afmkfd.xn--j1amh"] in [e.rcpt_tos for e in box.received]
