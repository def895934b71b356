"""Redis key layout (DESIGN invariant 7)."""

import re
import uuid

from tracker import keys


def _tag(key: str) -> str:
    match = re.search(r"\{([^}]*)\}", key)
    assert match, key
    return match.group(1)


def test_all_keys_of_a_visitor_share_one_hash_tag() -> None:
    """Every key one script touches for a visitor (history, ids, link, claim, its stream) is in one slot."""
    for _ in range(200):
        k = keys.VisitorKeys(str(uuid.uuid4()), 1024)
        tags = {_tag(x) for x in (k.events, k.ids, k.link, k.claim(1), k.linked_stream)}
        assert len(tags) == 1


def test_claims_are_per_contact_and_matched_by_the_claim_pattern() -> None:
    """Each contact has its own claim of a visitor; the claim pattern matches every one of them and no other key."""
    import fnmatch

    k = keys.VisitorKeys(str(uuid.uuid4()), 1024)
    assert k.claim(1) != k.claim(2)
    assert all(fnmatch.fnmatchcase(k.claim(c), k.claim_pattern) for c in (1, 2, 42, 10**12))
    assert not any(fnmatch.fnmatchcase(x, k.claim_pattern) for x in (k.events, k.ids, k.link, k.linked_stream))
    other = keys.VisitorKeys(str(uuid.uuid4()), 1024)
    assert not fnmatch.fnmatchcase(other.claim(1), k.claim_pattern)


def test_partition_is_stable_and_bounded() -> None:
    """The partition of a visitor is the same in every process and always below the partition count."""
    vid = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
    assert keys.partition(vid, 1024) == 862  # crc32: the same in every process, unlike hash()
    assert all(0 <= keys.partition(str(uuid.uuid4()), 64) < 64 for _ in range(500))


def test_visitors_spread_over_partitions() -> None:
    """Visitors spread over many partitions, so a cluster's slots share the load."""
    used = {keys.partition(str(uuid.uuid4()), 1024) for _ in range(5000)}
    assert len(used) > 900


def test_dedupe_tokens_are_small_stable_integers() -> None:
    """Event ids become 63-bit integers (Redis packs them 8 bytes each), the same in every process."""
    from tracker.eventlog import dedupe_token

    tokens = {dedupe_token(str(uuid.uuid4())) for _ in range(10_000)}
    assert len(tokens) == 10_000
    assert all(0 <= int(t) < 2**63 and str(int(t)) == t for t in tokens)
    assert dedupe_token("e1") == dedupe_token("e1") != dedupe_token("e2")


async def test_the_beacon_append_frame_is_the_plain_resp_encoding_of_its_evalsha() -> None:
    """EventLog.append builds its RESP frame from pre-encoded parts; it must equal the generic encoding, and
    goes with a key of the visitor's slot (where a cluster's group commit sends it)."""
    import asyncio

    from redis.crc import key_slot

    from tracker import resp
    from tracker.eventlog import APPEND, LINK_TTL_SECONDS, EventLog, dedupe_token

    class Recorder:
        frames: list[bytes] = []
        routes: list[str] = []

        def submit(self, encoded: bytes, key: str = "") -> asyncio.Future[list[int]]:
            self.frames.append(encoded)
            self.routes.append(key)
            fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
            fut.set_result([2, 0])
            return fut

    recorder = Recorder()
    log = EventLog(None, partitions=1024, anon_ttl_seconds=86_400 * 30, history_cap=10_000,  # type: ignore[arg-type]
                   committer=recorder)  # type: ignore[arg-type]
    vid = "5e1f0b7a-0c2d-4e3f-8a4b-00000000002a"
    events = [("e-1", b'{"id":"e-1","title":"Caf\xc3\xa9"}'), ("e:2", b'{"id":"e:2"}')]
    assert await log.append(vid, events) == (2, 0, [])
    k = log.keys(vid)
    argv = [86_400 * 30, 10_000, LINK_TTL_SECONDS, vid]
    for event_id, body in events:
        argv += [dedupe_token(event_id), body]
    assert recorder.frames == [resp.command(*APPEND.args([k.events, k.ids, k.link, k.linked_stream], argv))]
    assert {key_slot(r.encode()) for r in recorder.routes} == {key_slot(k.events.encode())}
    log.history_cap = 5  # settings changed after construction are what the next frame carries
    await log.append(vid, events)
    argv[1] = 5
    assert recorder.frames[-1] == resp.command(*APPEND.args([k.events, k.ids, k.link, k.linked_stream], argv))
