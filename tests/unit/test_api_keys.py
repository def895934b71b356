"""API_KEYS entries (issue 12): plain or SHA-256 keys with scopes, parsed at start-up with precise errors."""

from __future__ import annotations

import hashlib

import pytest
from multidict import MultiDict

from tracker.apikeys import ApiKeyConfigError, KeyRing, parse_api_keys
from tracker.scopes import ALL_SCOPES, ROUTE_SCOPES, Scope, needs_of
from tracker.settings import Settings

HEX = hashlib.sha256(b"s3cret").hexdigest()


def ring(*entries: str) -> KeyRing:
    return KeyRing(parse_api_keys(entries))


def test_a_plain_key_without_scopes_holds_every_scope() -> None:
    """``API_KEYS=a,b`` as before scopes existed: both keys may do everything; other keys nothing."""
    keys = Settings.from_env({"API_KEYS": "a, b"}).key_ring
    assert keys.scopes_of("a") == keys.scopes_of("b") == ALL_SCOPES
    assert keys.scopes_of("c") is None and keys.scopes_of("") is None and keys.scopes_of("a ") is None
    assert Settings().key_ring.scopes_of("dev-key") == ALL_SCOPES  # make run's embedded key
    assert Settings().key_ring.first_plain_key() == "dev-key"


def test_scopes_are_joined_with_plus_and_hashed_keys_match_their_plain_text() -> None:
    """``KEY:s1+s2`` holds exactly those; ``sha256:HEX[:scopes]`` is matched by the key whose SHA-256 it is."""
    other = hashlib.sha256("ключ".encode()).hexdigest().upper()
    keys = ring("k1:contacts+messages", f"sha256:{HEX}:admin", f"sha256:{other}", " k2 : Track ")
    assert keys.scopes_of("k1") == {Scope.CONTACTS, Scope.MESSAGES}
    assert keys.scopes_of("s3cret") == {Scope.ADMIN}
    assert keys.scopes_of("ключ") == ALL_SCOPES
    assert keys.scopes_of(HEX) is None  # the hash is not itself a key
    assert keys.scopes_of("k2 ") is None and keys.scopes_of("k2") == {Scope.TRACK}
    assert keys.first_plain_key() is None  # no plain key holds every scope: replay needs --api-key
    assert ring(f"sha256:{HEX}", "plain").first_plain_key() == "plain"


@pytest.mark.parametrize(("value", "says"), [
    ("good,bad:contact", "entry 2: unknown scope 'contact' (scopes: track, contacts, messages, admin"),
    ("good:admin+", "entry 1: unknown scope ''"),
    ("k:", "entry 1 ends in ':' without scopes"),
    ("a:b:c", "entry 1: unknown scope 'b:c'"),
    ("sha256:abc:admin", "entry 1: after 'sha256:' comes the key's SHA-256 as 64 hex digits (got 3 characters)"),
    (f"sha256:{HEX[:-1]}g", "64 hex digits"),
    ("sha256:", "entry 1 has an empty key hash"),
    (":admin", "entry 1 has an empty key"),
    ("x:track,y,x:admin", "entry 3 is the same key as entry 1"),
    (f"s3cret,sha256:{HEX}:admin", "entry 2 is the same key as entry 1"),
    (",", "API_KEYS holds no key"),
])
def test_a_malformed_entry_stops_the_start_naming_it(value: str, says: str) -> None:
    """Each malformed API_KEYS entry is refused when the settings are built, the message naming the entry by
    position and what is wrong — never the key itself."""
    with pytest.raises(ApiKeyConfigError) as caught:
        Settings.from_env({"API_KEYS": value})
    assert says in str(caught.value)
    for secret in ("good", "s3cret", "x:"):
        assert f"'{secret}" not in str(caught.value)


def test_settings_built_in_code_are_checked_too() -> None:
    """Settings(api_keys=...) parses its entries as the environment's are."""
    with pytest.raises(ApiKeyConfigError, match="unknown scope 'root'"):
        Settings(api_keys=("k:root",))


def test_erasing_needs_admin_whatever_the_spelling() -> None:
    """A delete needs contacts; one asking to erase (any value but false/0, in any of its repeats) admin."""
    delete = needs_of("DELETE", "/api/v1/contact/{contact_id}")
    assert delete.scope_for(MultiDict()) == Scope.CONTACTS
    assert delete.scope_for(MultiDict(erase="False")) == delete.scope_for(MultiDict(erase="0")) == Scope.CONTACTS
    for asks in (MultiDict(erase="true"), MultiDict(erase="1"), MultiDict(erase="yes"),
                 MultiDict([("erase", "false"), ("erase", "TRUE")])):
        assert delete.scope_for(asks) == Scope.ADMIN, asks
    assert needs_of("HEAD", "/api/v1/contact/{contact_id}/") == ROUTE_SCOPES[("GET", "/api/v1/contact/{contact_id}")]
    assert needs_of("GET", "/api/v1/no-such-route").scope == Scope.ADMIN  # unlisted: closed
    assert needs_of("GET", None).scope is None  # nothing routed: any key, then the 404


def test_every_configured_key_is_compared_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A presented key is hashed and compared (compare_digest, digest against digest) with every configured
    key, whichever matches and whether any does: no early exit tells how far down the list it matched."""
    import hmac

    from tracker import apikeys

    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(apikeys.hmac, "compare_digest", counting)
    keys = ring("first:track", "second:admin", f"sha256:{HEX}")
    for presented, scopes in (("first", {Scope.TRACK}), ("second", {Scope.ADMIN}), ("s3cret", ALL_SCOPES),
                              ("nobody", None)):
        compared.clear()
        assert keys.scopes_of(presented) == scopes
        assert len(compared) == 3 and {a for a, _ in compared} == {hashlib.sha256(presented.encode()).digest()}
