"""The bodies of the messages API, read and checked: a 400 names each bad field of a message; a bad recipient
fails alone (its ``error``), the others are sent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from stitcher import jsonbody
from stitcher.domain.errors import FieldErrors, ValidationFailed
from stitcher.domain.identifiers import IdentifierKind, Identity, Normaliser
from stitcher.messages.render import Template, TemplateRefused
from tracker.errors import ValidationFailed as BadJson

MAX_RECIPIENTS = 1000
MAX_TEMPLATE_CHARS = 256 * 1024
MAX_NAME = 256
MAX_SENDER = 320
MAX_JSON_PARAM_CHARS = 64 * 1024
MAX_TAGS = 100
MAX_LANGUAGE_CODE = 16  # as a contact's languageCode
MAX_EXTERNAL_REQUEST_ID = 256


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"

    @property
    def kind(self) -> IdentifierKind:
        return IdentifierKind.EMAIL if self is Channel.EMAIL else IdentifierKind.SMS


@dataclass(frozen=True)
class MessageDraft:
    """A prepared message as created: its channel, name, sender and templates (each parsed once, here)."""

    channel: Channel
    name: str
    subject: str | None
    sender: str | None
    body: str


@dataclass(frozen=True)
class Recipient:
    """One recipient of a send: who it names (``identity``, the locator among its channels), the
    ``locator`` as given (echoed in the answer), its jsonParam, the ``languageCode`` asked for this send and,
    if it cannot be sent to, why."""

    locator: str | None
    identity: Identity = field(default_factory=Identity)
    params: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    language: str | None = None


def _text(body: Mapping[str, Any], name: str, errors: FieldErrors, *, limit: int, required: bool) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            errors.add(name, "is required")
        return None
    if not isinstance(value, str):
        errors.add(name, "must be a string")
        return None
    if required and not value.strip():
        errors.add(name, "must not be blank")
        return None
    if len(value) > limit:
        errors.add(name, f"must be at most {limit} characters")
        return None
    if (why := jsonbody.text_problem(value)) is not None:
        errors.add(name, why)
        return None
    return value


def _template(body: Mapping[str, Any], name: str, errors: FieldErrors, *, required: bool) -> str | None:
    source = _text(body, name, errors, limit=MAX_TEMPLATE_CHARS, required=required)
    if source is not None:
        try:
            Template(source)
        except TemplateRefused as exc:
            errors.add(name, f"is not a valid template: {exc}")
            return None
    return source


def _object(payload: Any) -> Mapping[str, Any]:
    if not isinstance(payload, Mapping):
        raise ValidationFailed([{"field": "body", "message": "must be a JSON object"}])
    return payload


def _sender(body: Mapping[str, Any], errors: FieldErrors, normaliser: Normaliser, *, required: bool) -> str | None:
    """``from``: an address, or ``"Name" <address>``; only the address is checked."""
    sender = _text(body, "from", errors, limit=MAX_SENDER, required=required)
    if sender is not None:
        address = sender.rpartition("<")[2].rstrip("> ") if "<" in sender else sender
        try:
            normaliser.email(address, "from")
        except ValidationFailed as exc:
            errors.extend(exc)
            return None
        if any(c in sender for c in "\r\n"):
            errors.add("from", "must be one line")
            return None
    return sender


def parse_message(payload: Any, normaliser: Normaliser) -> MessageDraft:
    """``{channel: "email"|"sms", name, subject?, from?, body}``; templates that do not parse are refused."""
    body = _object(payload)
    errors = FieldErrors()
    channel: Channel | None = None
    raw = body.get("channel")
    if not isinstance(raw, str) or raw not in {c.value for c in Channel}:
        errors.add("channel", 'must be "email" or "sms"')
    else:
        channel = Channel(raw)
    name = _text(body, "name", errors, limit=MAX_NAME, required=True)
    subject = _template(body, "subject", errors, required=False)
    if subject is not None and any(c in subject for c in "\r\n"):
        errors.add("subject", "must be one line")
    sender = _sender(body, errors, normaliser, required=False)
    text = _template(body, "body", errors, required=True)
    errors.raise_if_any()
    assert channel is not None and name is not None and text is not None
    return MessageDraft(channel, name, subject, sender, text)


def recipients(payload: Any, normaliser: Normaliser) -> list[Recipient]:
    """``{recipients: [{contactId?, externalCustomerId?, locator?, jsonParam?, languageCode?}]}``, 1 to 1000;
    the list's shape is a 400, a recipient's bad field fails that recipient."""
    body = _object(payload)
    items = body.get("recipients")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_RECIPIENTS:
        raise ValidationFailed([{"field": "recipients",
                                 "message": f"must be a list of 1 to {MAX_RECIPIENTS} recipients"}])
    return [_recipient(item, i, normaliser) for i, item in enumerate(items)]


def _recipient(item: Any, i: int, normaliser: Normaliser) -> Recipient:
    where = f"recipients[{i}]"
    if not isinstance(item, Mapping):
        return Recipient(None, error=f"{where} must be an object")
    locator = item.get("locator")
    shown = locator if isinstance(locator, str) else None
    try:
        contact_id = _contact_id(item.get("contactId"), f"{where}.contactId")
        external_id = (normaliser.external_id(item["externalCustomerId"], f"{where}.externalCustomerId")
                       if item.get("externalCustomerId") not in (None, "") else None)
        channels = () if locator in (None, "") else (read_locator(locator, normaliser, f"{where}.locator"),)
        params = _json_param(item.get("jsonParam"), f"{where}.jsonParam")
        language = _language_code(item, f"{where}.languageCode")
    except ValidationFailed as exc:
        return Recipient(shown, error=exc.message)
    if contact_id is None and external_id is None and not channels:
        return Recipient(shown, error=f"{where}: give contactId, externalCustomerId or locator")
    return Recipient(shown, Identity(contact_id, external_id, channels), params, language=language)


def _language_code(item: Mapping[str, Any], where: str) -> str | None:
    """A recipient's ``languageCode`` (``en``, ``uk``, ``pt-BR``): the language the message is rendered for."""
    value = item.get("languageCode")
    if value is None or value == "":
        return None
    if not (isinstance(value, str) and len(value) <= MAX_LANGUAGE_CODE and value.isascii()
            and value.replace("-", "").replace("_", "").isalnum()):
        raise ValidationFailed([{"field": where, "message": f"must be a language code (letters, digits, '-' or "
                                                            f"'_', at most {MAX_LANGUAGE_CODE} characters)"}])
    return value


def _contact_id(value: Any, where: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 20:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**63:
        raise ValidationFailed([{"field": where, "message": "must be a positive integer"}])
    return value


def read_locator(value: Any, normaliser: Normaliser, where: str) -> tuple[IdentifierKind, str]:
    """A locator is an email (it has an ``@``) or else a phone number."""
    if isinstance(value, str) and "@" in value:
        return IdentifierKind.EMAIL, normaliser.email(value, where)
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return IdentifierKind.SMS, normaliser.phone(str(value), where)
    raise ValidationFailed([{"field": where, "message": "must be an email address or a phone number"}])


def _json_param(value: Any, where: str) -> Mapping[str, Any]:
    """``jsonParam``: a JSON object, or a string holding one; its keys become placeholders."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        if len(value) > MAX_JSON_PARAM_CHARS:
            raise ValidationFailed([{"field": where, "message": f"must be at most {MAX_JSON_PARAM_CHARS} characters"}])
        try:
            value = jsonbody.loads(value.encode())
        except (ValidationFailed, BadJson, ValueError) as exc:
            raise ValidationFailed([{"field": where, "message": f"is not valid JSON ({exc})"[:300]}]) from None
    if not isinstance(value, Mapping):
        raise ValidationFailed([{"field": where, "message": "must be a JSON object (or a string holding one)"}])
    if len(orjson.dumps(value)) > MAX_JSON_PARAM_CHARS:
        raise ValidationFailed([{"field": where, "message": f"must be at most {MAX_JSON_PARAM_CHARS} characters"}])
    return value


@dataclass(frozen=True)
class OneOffEmail:
    """``POST /api/v1/message/email``: a rendered-as-is email to known contacts by address."""

    sender: str
    subject: str
    html: str
    plain: str | None
    emails: list[tuple[str, str | None, str | None]]  # (as given, normalised, error)
    tags: list[str] | None = None
    external_request_id: str | None = None


def parse_email(payload: Any, normaliser: Normaliser) -> OneOffEmail:
    """``{from, subject, htmlText, plainText?, emails: [...], tags?}``; a bad address fails alone."""
    body = _object(payload)
    errors = FieldErrors()
    sender = _sender(body, errors, normaliser, required=True)
    subject = _text(body, "subject", errors, limit=998, required=True)
    if subject is not None and any(c in subject for c in "\r\n"):
        errors.add("subject", "must be one line")
    html = _text(body, "htmlText", errors, limit=MAX_TEMPLATE_CHARS, required=True)
    plain = _text(body, "plainText", errors, limit=MAX_TEMPLATE_CHARS, required=False)
    tags = body.get("tags")
    if tags is not None and not (isinstance(tags, list) and len(tags) <= MAX_TAGS
                                 and all(isinstance(t, str) and len(t) <= MAX_NAME
                                         and jsonbody.text_problem(t) is None for t in tags)):
        errors.add("tags", f"must be a list of at most {MAX_TAGS} strings of at most {MAX_NAME} characters")
        tags = None
    request_id = _external_request_id(body, errors)
    emails = body.get("emails")
    if not isinstance(emails, list) or not 1 <= len(emails) <= MAX_RECIPIENTS:
        errors.add("emails", f"must be a list of 1 to {MAX_RECIPIENTS} addresses")
    errors.raise_if_any()
    assert sender is not None and subject is not None and html is not None and isinstance(emails, list)
    out: list[tuple[str, str | None, str | None]] = []
    for i, raw in enumerate(emails):
        shown = raw if isinstance(raw, str) else orjson.dumps(raw).decode()[:256]
        try:
            out.append((shown, normaliser.email(raw, f"emails[{i}]"), None))
        except ValidationFailed as exc:
            out.append((shown, None, exc.message))
    return OneOffEmail(sender, subject, html, plain, out, tags or None, request_id)


def _external_request_id(body: Mapping[str, Any], errors: FieldErrors) -> str | None:
    """``externalRequestId``: the client's own id for the request, stored on each of its sends (the outbox is
    read back by it), as the platform does; not an idempotency key (``Idempotency-Key`` is)."""
    value = _text(body, "externalRequestId", errors, limit=MAX_EXTERNAL_REQUEST_ID, required=False)
    if value is not None and not value.isprintable():
        errors.add("externalRequestId", "must be printable characters")
        return None
    return value or None


@dataclass(frozen=True)
class SendOptions:
    """A smartsend's request-wide fields: ``fromName`` and ``externalRequestId``."""

    from_name: str | None = None
    external_request_id: str | None = None


def send_options(body: Mapping[str, Any]) -> SendOptions:
    """``fromName`` (the sender's display name for this send, one line, ≤ 256 characters) and
    ``externalRequestId``; a bad one is a 400 naming it."""
    errors = FieldErrors()
    name = _text(body, "fromName", errors, limit=MAX_NAME, required=False)
    if name is not None and any(c in name for c in '\r\n"<>'):
        errors.add("fromName", "must be one line without quotes or angle brackets")
    request_id = _external_request_id(body, errors)
    errors.raise_if_any()
    return SendOptions(name or None, request_id)
