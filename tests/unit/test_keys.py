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
        tags = {_tag(x) for x in (k.events, k.ids, k.link, k.claim, k.linked_stream)}
        assert len(tags) == 1


def test_partition_is_stable_and_bounded() -> None:
    """The partition of a visitor is the same in every process and always below the partition count."""
    vid = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
    assert keys.partition(vid, 1024) == 862  # crc32: the same in every process, unlike hash()
    assert all(0 <= keys.partition(str(uuid.uuid4()), 64) < 64 for _ in range(500))


def test_visitors_spread_over_partitions() -> None:
    """Visitors spread over many partitions, so a cluster's slots share the load."""
    used = {keys.partition(str(uuid.uuid4()), 1024) for _ in range(5000)}
    assert len(used) > 900
