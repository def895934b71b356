"""The delivery worker: queued email over SMTP (aiosmtplib), queued SMS to a webhook; the state lives in SQL.

A round claims due rows of a channel in a short transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
two service processes take different rows) and leases them: their ``next_attempt_at`` moves ``LEASE_MS``
ahead, so no one else takes them while they are sent outside any transaction. Each row then ends ``sent``,
``failed`` (a permanent refusal: an SMTP 5xx, a server without the SMTPUTF8 an address needs, a webhook 4xx
other than 429, or ``MAX_ATTEMPTS`` tries) or stays ``queued`` with its ``next_attempt_at`` backed off
exponentially and the error: whatever the attempt raised — a receiver that hangs (``timeout_s``; a whole
attempt ends well inside its lease), drops the connection, redirects (not followed) or is absent. A process
that dies mid-send leaves its rows leased: they are tried again when the lease runs out (delivery is at
least once; the receiver can drop repeats by ``requestId``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import aiohttp
import aiosmtplib
import orjson
import structlog
from yarl import URL

from stitcher.store import messages as store
from stitcher.store import repo
from stitcher.store.db import Database
from stitcher.store.models import OutboxEntry

log = structlog.get_logger("delivery")
LEASE_MS = 5 * 60_000
MAX_ATTEMPTS = 8
BATCH = 50
SEND_TIMEOUT_S = 30.0  # each SMTP command or the whole webhook call
ATTEMPT_TIMEOUTS = 4  # a whole attempt is cut off after this many SEND_TIMEOUTs (a server trickling its replies)
assert ATTEMPT_TIMEOUTS * SEND_TIMEOUT_S * 1000 < LEASE_MS / 2, "an attempt must end well inside its lease"


class Permanent(Exception):
    """The receiving side refused for good: the row is failed, not retried."""


@dataclass(frozen=True)
class SmtpTarget:
    """Where ``SMTP_URL`` points: ``smtp://`` (STARTTLS when offered), ``smtps://`` (TLS from the start)."""

    host: str
    port: int
    username: str | None
    password: str | None
    use_tls: bool

    @classmethod
    def parse(cls, url: str) -> SmtpTarget:
        u = URL(url)
        if u.scheme not in ("smtp", "smtps") or not u.host:
            raise ValueError("SMTP_URL must be smtp://[user:password@]host[:port] or smtps://…")
        tls = u.scheme == "smtps"
        return cls(u.host, u.explicit_port or (465 if tls else 25), u.user, u.password, tls)


def ascii_domain(address: str) -> str:
    """An address with its domain in IDNA form (``ann@xn--e1afmkfd.xn--j1amh``), so a server without SMTPUTF8
    takes it; a non-ASCII local part still needs SMTPUTF8 (there is no ASCII form of it)."""
    local, at, domain = address.rpartition("@")
    try:
        return f"{local}{at}{domain.encode('idna').decode('ascii')}" if not domain.isascii() else address
    except UnicodeError:
        return address


def email_of(row: OutboxEntry) -> EmailMessage:
    """The MIME message of an outbox row: HTML with its plain-text alternative when there is one."""
    message = EmailMessage()
    message["From"] = row.sender or ""
    message["To"] = ascii_domain(row.address)
    message["Subject"] = row.subject or ""
    message["Message-ID"] = make_msgid(idstring=row.request_id)
    message["X-Stitcher-Request-Id"] = row.request_id
    if row.plain_text is not None:
        message.set_content(row.plain_text)
        message.add_alternative(row.body, subtype="html")
    else:
        message.set_content(row.body, subtype="html")
    return message


class Delivery:
    """Delivers what the outbox holds for the channels it is configured for."""

    def __init__(self, db: Database, smtp_url: str | None, sms_webhook_url: str | None, *,
                 backoff_ms: int = 1000, poll_s: float = 1.0, timeout_s: float = SEND_TIMEOUT_S) -> None:
        self.db = db
        self.timeout_s = timeout_s
        self.smtp = SmtpTarget.parse(smtp_url) if smtp_url else None
        self.webhook = sms_webhook_url
        self.backoff_ms = backoff_ms
        self.poll_s = poll_s
        self.stopping = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None

    @property
    def channels(self) -> tuple[str, ...]:
        return (*(("email",) if self.smtp else ()), *(("sms",) if self.webhook else ()))

    async def run(self) -> None:
        """Deliver until stopped; a round that found nothing waits ``poll_s``."""
        while not self.stopping.is_set():
            try:
                done = await self.deliver_once()
            except Exception:  # a database outage must not end the worker: it tries again next round
                log.exception("delivery round failed")
                done = 0
            if not done:
                try:
                    await asyncio.wait_for(self.stopping.wait(), self.poll_s)
                except TimeoutError:
                    pass

    async def deliver_once(self) -> int:
        """One round over every configured channel; how many rows it tried."""
        tried = 0
        for channel in self.channels:
            rows = await self._claim(channel)
            await asyncio.gather(*(self._deliver(row) for row in rows))
            tried += len(rows)
        return tried

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def _claim(self, channel: str) -> Sequence[OutboxEntry]:
        now = repo.now_ms()
        async with self.db.transaction() as s:
            return await store.claim_due(self.db, s, channel, now, BATCH, now + LEASE_MS)

    async def _deliver(self, row: OutboxEntry) -> None:
        attempts = row.attempts + 1
        now = repo.now_ms()
        values: dict[str, Any] = {"attempts": attempts, "updated_at": now}
        try:
            # bounded as a whole, so its outcome is written while the row is still leased to this worker (no
            # other takes it meanwhile and sends it again)
            async with asyncio.timeout(self.timeout_s * ATTEMPT_TIMEOUTS):
                await (self._send_email(row) if row.channel == "email" else self._post_sms(row))
            values |= {"state": store.SENT, "error": None}
        except Permanent as exc:
            values |= {"state": store.FAILED, "error": str(exc)[:2000]}
        except Exception as exc:  # a refusal for now, a dead or hanging receiver — or a bug: retried, never a crash
            if not isinstance(exc, (aiosmtplib.SMTPException, aiohttp.ClientError, OSError, TimeoutError)):
                log.exception("delivery attempt failed unexpectedly", outbox_id=row.id)
            why = f"{type(exc).__name__}: {exc}"[:2000]
            if attempts >= MAX_ATTEMPTS:
                values |= {"state": store.FAILED, "error": f"gave up after {attempts} attempts; {why}"}
            else:
                values |= {"error": why, "next_attempt_at": now + self.backoff_ms * 2 ** (attempts - 1)}
        assert row.id is not None
        row_id = row.id

        async def record() -> None:
            async with self.db.transaction() as s:
                await store.set_outcome(s, row_id, values)  # an erased contact's row is gone: nothing to update

        # a collision is retried: an outcome left unwritten would have the row sent again when its lease ends
        await self.db.retry(record)
        log.info("delivery", outbox_id=row.id, channel=row.channel, state=values.get("state", "queued"),
                 attempts=attempts)

    async def _send_email(self, row: OutboxEntry) -> None:
        assert self.smtp is not None
        if not row.sender:
            raise Permanent("the message has no from address")
        t = self.smtp
        try:
            await aiosmtplib.send(email_of(row), hostname=t.host, port=t.port, username=t.username,
                                  password=t.password, use_tls=t.use_tls, start_tls=None if not t.use_tls else False,
                                  timeout=self.timeout_s, tls_context=ssl.create_default_context())
        except aiosmtplib.SMTPNotSupported as exc:  # what the server lacks (SMTPUTF8) retrying will not give it
            raise Permanent(str(exc)) from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            if all(500 <= r.code < 600 for r in exc.recipients):
                raise Permanent("; ".join(f"{r.code} {r.message}" for r in exc.recipients)) from None
            raise
        except aiosmtplib.SMTPResponseException as exc:
            if 500 <= exc.code < 600:
                raise Permanent(f"{exc.code} {exc.message}") from None
            raise

    async def _post_sms(self, row: OutboxEntry) -> None:
        assert self.webhook is not None
        if self._http is None:
            # UTF-8 JSON (the stdlib's \u-escapes make a Cyrillic text three times the size)
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                               json_serialize=lambda v: orjson.dumps(v).decode())
        body = {"requestId": row.request_id, "to": row.address, "text": row.body, "contactId": row.contact_id,
                "messageId": row.message_id}
        # a redirect is not followed: it would turn the POST into a GET of another URL (or post the text where
        # it was not configured to go), and a 2xx there would mark sent an SMS no one received
        async with self._http.post(self.webhook, json=body, allow_redirects=False) as response:
            if response.status < 300:
                return  # the body is not read: a receiver answering gigabytes costs nothing
            detail = f"the SMS webhook answered {response.status}"
            if 300 <= response.status < 400:
                detail += " (a redirect, not followed: SMS_WEBHOOK_URL should be where it lands)"
            if 400 <= response.status < 500 and response.status != 429:
                raise Permanent(detail)
            raise aiohttp.ClientResponseError(response.request_info, (), status=response.status, message=detail)
