"""API keys as configured (``API_KEYS``): each a plain key or a SHA-256 hash, with the scopes it holds.

An entry is ``KEY`` or ``KEY:SCOPE+SCOPE`` or ``sha256:HEX`` or ``sha256:HEX:SCOPE+SCOPE``; entries are
separated by commas. An entry without scopes holds every scope — what every key meant before scopes
existed, so ``API_KEYS=a,b`` keeps working. A key therefore contains no ``,`` and no ``:``.

Keys are kept and compared only as SHA-256 digests: a request's key is hashed once and compared with
``hmac.compare_digest`` against every configured digest, all of them every time, so the time taken says
neither whether nor which key matched.
"""

from __future__ import annotations

import hashlib
import hmac
import string
from collections.abc import Iterable
from dataclasses import dataclass

from tracker.scopes import ALL_SCOPES, Scope

HASH_PREFIX = "sha256:"


class ApiKeyConfigError(ValueError):
    """A malformed ``API_KEYS`` entry: the message names the entry by position, never its key."""


@dataclass(frozen=True)
class ApiKey:
    digest: bytes  # SHA-256 of the key's UTF-8 bytes
    scopes: frozenset[Scope]
    plain: str | None = None  # the key itself when configured in plain text (the CLI's replay uses it)


def digest_of(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_api_keys(entries: Iterable[str]) -> tuple[ApiKey, ...]:
    """The keys of the configured entries; ApiKeyConfigError naming the first malformed one."""
    keys: list[ApiKey] = []
    seen: dict[bytes, int] = {}
    for number, entry in enumerate(entries, start=1):
        key = _parse_entry(entry.strip(), f"API_KEYS entry {number}")
        if key.digest in seen:
            raise ApiKeyConfigError(f"API_KEYS entry {number} is the same key as entry {seen[key.digest]}; "
                                    "give one key all its scopes in one entry (SCOPE+SCOPE)")
        seen[key.digest] = number
        keys.append(key)
    if not keys:
        raise ApiKeyConfigError("API_KEYS holds no key: without one the API could not be used")
    return tuple(keys)


def _parse_entry(entry: str, where: str) -> ApiKey:
    hashed = entry.startswith(HASH_PREFIX)
    body = entry[len(HASH_PREFIX):] if hashed else entry
    secret, colon, scope_text = body.partition(":")
    secret = secret.strip()
    if not secret:
        raise ApiKeyConfigError(f"{where} has an empty key" + (" hash" if hashed else ""))
    if hashed and not (len(secret) == 64 and all(c in string.hexdigits for c in secret)):
        raise ApiKeyConfigError(f"{where}: after 'sha256:' comes the key's SHA-256 as 64 hex digits "
                                f"(got {len(secret)} characters)")
    scopes = _parse_scopes(scope_text, where) if colon else ALL_SCOPES
    if hashed:
        return ApiKey(bytes.fromhex(secret), scopes)
    return ApiKey(digest_of(secret), scopes, plain=secret)


def _parse_scopes(text: str, where: str) -> frozenset[Scope]:
    if not text.strip():
        raise ApiKeyConfigError(f"{where} ends in ':' without scopes (leave out the ':' for every scope)")
    names = [name.strip().lower() for name in text.split("+")]
    unknown = [name for name in names if name not in {s.value for s in Scope}]
    if unknown:
        shown = ", ".join(repr(n) for n in unknown)
        raise ApiKeyConfigError(f"{where}: unknown scope {shown} (scopes: {', '.join(s.value for s in Scope)}, "
                                "joined with '+', e.g. key:contacts+messages; a key itself holds no ':')")
    return frozenset(Scope(name) for name in names)


class KeyRing:
    """The configured keys, asked which scopes a presented key holds."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.keys = tuple(keys)

    def scopes_of(self, presented: str) -> frozenset[Scope] | None:
        """The scopes of the configured key equal to ``presented``, or None when none is (or it is empty)."""
        digest = digest_of(presented)
        found: frozenset[Scope] | None = None
        for key in self.keys:  # every key, always: no early exit tells how far down the list a match was
            if hmac.compare_digest(digest, key.digest):
                found = key.scopes
        return found if presented else None

    def first_plain_key(self) -> str | None:
        """The first key configured in plain text that holds every scope (what ``replay`` uses by default)."""
        return next((k.plain for k in self.keys if k.plain is not None and k.scopes == ALL_SCOPES), None)
