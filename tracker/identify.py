"""Signed identify: a browser links its visitor to an external customer ID that the site's backend signed.

``stitcher('identify', {externalCustomerId, signature})`` posts to ``POST /t/identify``. The signature is
HMAC-SHA256 (hex) of the ID under a secret only the site's backend and the collector know
(``IDENTIFY_SECRET``; during a rotation two, ``new,old``), so a browser can name only an ID the backend
vouched for — never an unsigned one, an email or a phone. The collector checks the signature (in constant
time) and hands the verified link to the stitcher through a Redis stream (``IdentifyLog``); the stitcher's
consumer (``stitcher.identify``) links the visitor as the contact API would. Nothing here reads or creates a
contact (DESIGN invariant 1), and nothing here imports the stitcher.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import ResponseError

from tracker import keys
from tracker.answers import UNAVAILABLE, Reply, cookie_value, json_reply
from tracker.errors import DomainError, Unavailable, ValidationFailed
from tracker.redis_client import AnyRedis
from tracker.visitor import COOKIE, COOKIE_MAX_AGE, choose_visitor_id, parse_visitor_id

MAX_BODY_BYTES = 4096  # an ID of 256 characters, a signature, a visitor id: far below this
MAX_EXTERNAL_ID = 256  # as the contact API's externalCustomerId
STREAM_MAXLEN = 100_000  # identifies waiting for the stitcher's consumer (approximate cap)
_FIELDS = ("externalCustomerId", "signature", "vid", "reset")
_PERSONAL = frozenset({"email", "phone", "sms", "channels", "mobilepush", "webpush", "contactid", "id"})
_HEX = frozenset("0123456789abcdef")


class IdentifyDisabled(DomainError):
    status = 403
    code = "identify_disabled"

    def __init__(self) -> None:
        super().__init__("identify is off: the collector has no IDENTIFY_SECRET configured")


class MissingSignature(DomainError):
    status = 403
    code = "missing_signature"

    def __init__(self) -> None:
        super().__init__("identify needs a signature: HMAC-SHA256 (hex) of externalCustomerId, made by the "
                         "site's backend with IDENTIFY_SECRET")


class BadSignature(DomainError):
    status = 403
    code = "bad_signature"

    def __init__(self) -> None:
        super().__init__("the signature is not HMAC-SHA256 (hex) of externalCustomerId under a configured "
                         "IDENTIFY_SECRET; nothing was linked")


def sign(secret: str, external_id: str) -> str:
    """What the site's backend computes: HMAC-SHA256 of the ID (UTF-8) under the secret, in hex."""
    return hmac.new(secret.encode(), external_id.encode(), hashlib.sha256).hexdigest()


def verify(secrets: tuple[str, ...], external_id: str, signature: str) -> bool:
    """Whether ``signature`` is ``sign(s, external_id)`` for one of ``secrets`` (two during a rotation).

    Each secret is compared with ``hmac.compare_digest`` and every one is tried, so the time taken says
    nothing about how much of a signature was right or which secret matched.
    """
    given = signature.strip().lower().encode()
    valid = False
    for secret in secrets:
        valid |= hmac.compare_digest(given, sign(secret, external_id).encode())
    return valid


@dataclass(frozen=True)
class IdentifyRequest:
    """An identify body, read: the ID exactly as signed, its signature, the script's visitor id and reset."""

    external_id: str
    signature: str
    vid: str | None = None
    reset: bool = False


def parse_identify(raw: bytes) -> IdentifyRequest:
    """Read an identify body; 400 (``ValidationFailed``) naming each bad field.

    Only ``externalCustomerId``, ``signature``, ``vid`` and ``reset`` are taken: a body naming anything
    else (an email, a phone, a contactId …) is refused whole, so a browser can never name a person by an
    identifier its site did not sign. A missing or empty signature is a 403 (``MissingSignature``).
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValidationFailed([{"field": "body", "message": "must be a JSON object (UTF-8)"}]) from None
    if not isinstance(body, dict):
        raise ValidationFailed([{"field": "body", "message": "must be a JSON object"}])
    errors = [{"field": str(k)[:64], "message": _refusal(str(k))} for k in body if k not in _FIELDS]
    external_id = body.get("externalCustomerId")
    if isinstance(external_id, int) and not isinstance(external_id, bool):
        external_id = str(external_id)  # as the contact API takes a JSON integer: its digits
    if not isinstance(external_id, str) or not external_id.strip() or len(external_id) > MAX_EXTERNAL_ID \
            or "\x00" in external_id:
        errors.append({"field": "externalCustomerId",
                       "message": f"must be a string of 1-{MAX_EXTERNAL_ID} characters (the ID the backend signed)"})
    vid = body.get("vid")
    if vid is not None and parse_visitor_id(vid) is None:
        errors.append({"field": "vid", "message": "must be a visitor id (UUID)"})
    reset = body.get("reset", False)
    if not isinstance(reset, bool):
        errors.append({"field": "reset", "message": "must be true or false"})
    signature = body.get("signature")
    if signature is not None and not isinstance(signature, str):
        errors.append({"field": "signature", "message": "must be a string (hex)"})
    if errors:
        raise ValidationFailed(errors)
    if not signature:
        raise MissingSignature()
    assert isinstance(external_id, str)
    return IdentifyRequest(external_id, signature, parse_visitor_id(vid), reset)


def _refusal(field: str) -> str:
    if field.lower() in _PERSONAL:
        return ("a browser may not name an email, phone or other identifier: identify takes only a signed "
                "externalCustomerId")
    return "not an identify field (externalCustomerId, signature, vid, reset)"


@dataclass(frozen=True)
class Identified:
    """A verified identify waiting in the stream: link ``vid`` to the contact with ``external_id``."""

    entry_id: str
    vid: str
    external_id: str
    request_id: str


class IdentifyLog:
    """The stream of verified identifies (``tracker.keys.IDENTIFY``), read by the stitcher with a consumer
    group: at-least-once, so the consumer's work must be repeat-safe (the contact API's is)."""

    def __init__(self, redis: AnyRedis, maxlen: int = STREAM_MAXLEN) -> None:
        self.redis = redis
        self.maxlen = maxlen

    async def add(self, vid: str, external_id: str, request_id: str) -> None:
        await self.redis.xadd(keys.IDENTIFY, {"v": vid, "x": external_id, "r": request_id,
                                              "at": int(time.time() * 1000)},
                              maxlen=self.maxlen, approximate=True)

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(keys.IDENTIFY, keys.IDENTIFY_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # else the group exists already
                raise

    async def read(self, consumer: str, *, block_ms: int | None, pending: bool = False,
                   count: int = 100) -> list[Identified]:
        """New identifies for this consumer (blocking up to ``block_ms``), or, with ``pending``, those it was
        given and never acknowledged."""
        reply: Any = await self.redis.xreadgroup(keys.IDENTIFY_GROUP, consumer,
                                                 {keys.IDENTIFY: "0" if pending else ">"}, count=count, block=block_ms)
        return [item for stream in reply or [] for item in _entries(stream[1])]

    async def reclaim(self, consumer: str, min_idle_ms: int) -> list[Identified]:
        """Take over identifies another (dead) consumer read and never acknowledged."""
        reply = await self.redis.xautoclaim(keys.IDENTIFY, keys.IDENTIFY_GROUP, consumer, min_idle_ms, "0-0",
                                            count=100)
        return _entries(reply[1]) if reply else []

    async def ack(self, items: list[Identified]) -> None:
        """Acknowledge and delete handled identifies (an external ID stays in Redis no longer than needed)."""
        if items:
            ids = [i.entry_id for i in items]
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xack(keys.IDENTIFY, keys.IDENTIFY_GROUP, *ids)
                pipe.xdel(keys.IDENTIFY, *ids)
                await pipe.execute()


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(entries: Any) -> list[Identified]:
    out = []
    for entry_id, fields in entries or []:
        if not fields:  # deleted while pending
            continue
        f = {_s(k): _s(v) for k, v in fields.items()}
        out.append(Identified(_s(entry_id), f["v"], f["x"], f.get("r", "")))
    return out


class Identify:
    """``POST /t/identify``'s work, free of any HTTP server: headers and body in, a ``Reply`` out."""

    def __init__(self, secrets: tuple[str, ...], log: IdentifyLog) -> None:
        self.secrets = secrets
        self.log = log

    async def identify(self, headers: Mapping[str, str], raw: bytes, secure: bool, request_id: str) -> Reply:
        """Verify and queue one identify: 202 once the link is in Redis (the stitcher makes it within about a
        second). 403 when off or badly signed, 400 for a bad body, 503 when Redis is down — nothing queued."""
        if not self.secrets:
            raise IdentifyDisabled()
        request = parse_identify(raw)
        if not verify(self.secrets, request.external_id, request.signature):
            raise BadSignature()
        vid, _ = choose_visitor_id(cookie_value(headers.get("cookie")), request.vid, request.reset)
        try:
            await self.log.add(vid, request.external_id, request_id)
        except UNAVAILABLE as exc:
            raise Unavailable("storage is unavailable, retry shortly") from exc
        reply = json_reply({"visitorId": vid, "status": "accepted"}, 202)
        reply.headers += [("Set-Cookie", f"{COOKIE}={vid}; Max-Age={COOKIE_MAX_AGE}; Path=/; HttpOnly; "
                                         f"SameSite=Lax{'; Secure' if secure else ''}"),
                          ("X-Stitcher-Visitor", vid), ("Cache-Control", "no-store")]
        return reply
