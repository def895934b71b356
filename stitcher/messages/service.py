"""Sends: a whole request's recipients resolved, rendered and written to the outbox in one transaction.

1. an ``Idempotency-Key`` already answered returns its receipt (nothing is sent twice);
2. every recipient's contacts are read set-wise (``store.find_recipients``: a few queries for 1000
   recipients) and each recipient is resolved by the one rule (``rules.resolve_recipient``);
3. each resolved recipient's subject and body are rendered (``render.Template``; a render that fails fails
   that recipient alone);
4. the contacts the recipients resolved to are share-locked (``store.moved_recipients``): one merged away,
   deleted or erased since it was read makes the transaction run again, so a send racing a merge lands on the winner
   (a contactId of a merged contact names its winner, ``repo.merge_winners``), never on the merged-away row;
5. the outbox rows, their ``source: "message"`` timeline entries and the receipt are inserted in multi-row
   statements. A send changes no contact, so it takes no identity keys; a contact erased meanwhile makes
   the insert fail its foreign key, and the transaction runs again without it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from stitcher.domain.identifiers import IdentifierKind, Identity
from stitcher.domain.rules import resolve_recipient
from stitcher.messages.payload import Channel, MessageDraft, OneOffEmail, Recipient, SendOptions
from stitcher.messages.render import RenderFailed, Template
from stitcher.store import messages as store
from stitcher.store import orders as timeline
from stitcher.store import repo
from stitcher.store.db import Contention, Database
from stitcher.store.messages import Person, Recipients
from stitcher.store.models import Message
from tracker.errors import NotFound


class _RecipientMoved(Exception):
    """A recipient's contact was merged, deleted or erased between its read and its lock: send again."""


class MessageNotFound(NotFound):
    code = "message_not_found"

    def __init__(self, message_id: int) -> None:
        super().__init__(f"message {message_id} not found", messageId=message_id)


@dataclass(frozen=True)
class Content:
    """What is sent to every recipient of a request: the templates (or fixed text) and sender."""

    channel: Channel
    sender: str | None
    subject: Template | None
    body: Template | str
    plain: str | None = None
    message_id: int | None = None
    tags: list[str] | None = None
    external_request_id: str | None = None


def context(person: Person, params: Mapping[str, Any], language: str | None = None) -> dict[str, Any]:
    """A recipient's placeholders: the jsonParam keys, then the contact's (which win on a shared name);
    ``languageCode`` is the recipient's, when the send gives one, else the contact's."""
    c = person.contact
    emails, phones = person.addresses(IdentifierKind.EMAIL), person.addresses(IdentifierKind.SMS)
    fields = {str(f.get("id")): f.get("value") for f in c.custom_fields or [] if isinstance(f, Mapping)}
    return {**params, "contactId": c.id, "firstName": c.first_name or "", "lastName": c.last_name or "",
            "email": emails[0] if emails else "", "sms": phones[0] if phones else "",
            "externalCustomerId": c.external_customer_id or "", "languageCode": language or c.language_code or "",
            "fields": fields}


class MessageService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, draft: MessageDraft) -> int:
        async with self.db.transaction() as s:
            return await store.add_message(s, {"channel": draft.channel.value, "name": draft.name,
                                               "subject": draft.subject, "sender": draft.sender,
                                               "body": draft.body})

    async def message(self, message_id: int) -> Message:
        async with self.db.reader() as s:
            message = await store.get_message(s, message_id)
        if message is None:
            raise MessageNotFound(message_id)
        return message

    async def smartsend(self, message_id: int, recipients: Sequence[Recipient], options: SendOptions,
                        key: str | None) -> dict[str, Any]:
        message = await self.message(message_id)
        sender = message.sender
        if options.from_name and sender:
            sender = f'"{options.from_name}" <{sender.rpartition("<")[2].rstrip("> ")}>'
        content = Content(Channel(message.channel), sender, Template(message.subject) if message.subject else None,
                          Template(message.body), message_id=message_id,
                          external_request_id=options.external_request_id)
        return await self._send(content, recipients, _receipt_key(f"message:{message_id}", key))

    async def email(self, email: OneOffEmail, key: str | None) -> dict[str, Any]:
        recipients = [Recipient(shown, Identity(channels=((IdentifierKind.EMAIL, address),)))
                      if address is not None else Recipient(shown, error=error)
                      for shown, address, error in email.emails]
        content = Content(Channel.EMAIL, email.sender, None, email.html, email.plain, tags=email.tags,
                          external_request_id=email.external_request_id)
        return await self._send(content, recipients, _receipt_key("email", key), subject=email.subject)

    async def _send(self, content: Content, recipients: Sequence[Recipient], key: str | None,
                    subject: str | None = None) -> dict[str, Any]:
        try:
            return await self.db.retry(lambda: self._send_once(content, recipients, key, subject),
                                       also=(IntegrityError, _RecipientMoved))
        except (IntegrityError, _RecipientMoved) as exc:
            raise Contention(type(exc).__name__) from exc

    async def _send_once(self, content: Content, recipients: Sequence[Recipient], key: str | None,
                         subject: str | None) -> dict[str, Any]:
        now = repo.now_ms()
        async with self.db.transaction() as s:
            if key is not None and (answer := await store.receipt(s, key)) is not None:
                return answer
            found = await store.find_recipients(s, [r.identity for r in recipients if r.error is None])
            results: list[dict[str, Any]] = []
            rows: list[dict[str, Any]] = []
            for recipient in recipients:
                result, row = _one(content, recipient, found, subject, now)
                results.append(result)
                if row is not None:
                    rows.append(row)
            # every contact a recipient resolved to, sent or failed (a merge moving its channels mid-read)
            if moved := await store.moved_recipients(self.db, s, (r["id"] for r in results if r["id"] is not None)):
                raise _RecipientMoved(sorted(moved))
            ids = await store.add_outbox(self.db, s, rows)
            await timeline.add_timeline(self.db, s, [_timeline_row(i, row, now) for i, row in zip(ids, rows,
                                                                                                  strict=True)])
            answer = {"id": 0, "results": results}
            if key is not None:
                store.add_receipt(s, key, answer)
        return answer


def _one(content: Content, recipient: Recipient, found: Recipients, subject: str | None,
         now: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A recipient's result, and its outbox row if it is sent."""
    def failed(why: str, contact_id: int | None = None) -> tuple[dict[str, Any], None]:
        return {"id": contact_id, "locator": recipient.locator, "status": "ERROR", "requestId": None,
                "message": why}, None

    if recipient.error is not None:
        return failed(recipient.error)
    match = resolve_recipient(recipient.identity, found.lookup(recipient.identity))
    if match.contact_id is None:
        return failed(match.error or "no contact")
    person = found.people[match.contact_id]
    kind = content.channel.kind
    addresses = person.addresses(kind)
    locator = recipient.identity.channels[0] if recipient.identity.channels else None
    address = locator[1] if locator is not None and locator[0] is kind else addresses[0] if addresses else None
    if address is None:
        return failed(f"contact {match.contact_id} has no {content.channel.value} channel", match.contact_id)
    values = context(person, recipient.params, recipient.language)
    try:
        body = content.body.render(values) if isinstance(content.body, Template) else content.body
        rendered = content.subject.render(values) if content.subject is not None else subject
    except RenderFailed as exc:
        return failed(f"the message could not be rendered: {exc}", match.contact_id)
    if rendered is not None:
        rendered = " ".join(rendered.splitlines())  # a placeholder must not add header lines
    request_id = str(uuid.uuid4())
    row = {"message_id": content.message_id, "contact_id": match.contact_id, "channel": content.channel.value,
           "address": address, "sender": content.sender, "subject": rendered, "body": body,
           "plain_text": content.plain, "request_id": request_id, "state": store.QUEUED, "attempts": 0,
           "error": None, "next_attempt_at": now, "created_at": now, "updated_at": now,
           "language_code": values["languageCode"] or None, "tags": content.tags,
           "external_request_id": content.external_request_id}
    named = recipient.identity.contact_id
    note = f"contact {named} was merged into contact {match.contact_id}" \
        if named is not None and named != match.contact_id else None
    return {"id": match.contact_id, "locator": recipient.locator or address, "status": "OK",
            "requestId": request_id, "message": note}, row


def _timeline_row(outbox_id: int, row: Mapping[str, Any], now: int) -> dict[str, Any]:
    return {"contact_id": row["contact_id"], "event_id": f"message:{row['request_id']}", "source": "message",
            "type": "messageQueued", "occurred_at": now, "received_at": now, "visitor_id": None,
            "data": {"outboxId": outbox_id, "messageId": row["message_id"], "channel": row["channel"],
                     "requestId": row["request_id"], "subject": row["subject"]}}


def _receipt_key(scope: str, key: str | None) -> str | None:
    """The receipt's key: a digest of what is sent to and the client's ``Idempotency-Key``."""
    if key is None:
        return None
    return hashlib.sha256(f"{scope}\x00{key}".encode()).hexdigest()
