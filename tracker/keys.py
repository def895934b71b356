"""Every Redis key name Stitcher uses, in one place.

All keys of one visitor carry the visitor's *partition* as hash tag (``{17}``), and each partition has one
stream of events for already-linked visitors. A Lua script that touches a visitor's keys and its partition's
stream therefore stays in one hash slot, on a single Redis and on Redis Cluster alike (DESIGN invariant 7).
"""

from __future__ import annotations

import zlib

PREFIX = "st"
LINKED_GROUP = "stitcher"  # consumer group reading the linked streams
REJECTED = f"{PREFIX}:rejected"  # stream of rejected beacon events, for operators
IDENTIFY = f"{PREFIX}:identify"  # stream of verified identifies (tracker.identify), read by the stitcher
IDENTIFY_GROUP = "stitcher"  # consumer group reading it

# string: the run id of the Redis server whose visitor links were last re-seeded from SQL; a server that lost
# its data (or restarted, perhaps losing its last writes) has another run id, so the sweeper seeds it again
LINKS_SEEDED = f"{PREFIX}:links-seeded"


def bucket(scope: str, who: str) -> str:
    """Hash: the rate limiter's token bucket of ``who`` (a client address, a digest of an API key) in ``scope``
    (``tracker.ratelimit``). One key per script call, so any slot will do."""
    return f"{PREFIX}:rl:{scope}:{who}"


def partition(vid: str, partitions: int) -> int:
    """The visitor's partition: stable across processes and Python versions."""
    return zlib.crc32(vid.encode()) % partitions


class VisitorKeys:
    """The keys of one visitor."""

    __slots__ = ("_claim", "events", "ids", "link", "linked_stream", "vid")

    def __init__(self, vid: str, partitions: int) -> None:
        p = partition(vid, partitions)
        visitor = f"{PREFIX}:{{{p}}}:v:{vid}"
        self.vid = vid
        self.events = f"{visitor}:ev"  # list: anonymous history, oldest first
        self.ids = f"{visitor}:ids"  # set: event ids already stored (idempotency)
        self.link = f"{visitor}:link"  # string: contact id the visitor is linked to
        self._claim = f"{visitor}:claim:"
        self.linked_stream = linked_stream(p)

    def claim(self, contact_id: int) -> str:
        """List: the history handed over to a stitch onto ``contact_id`` that has not finished yet.

        One per contact, so a shared browser's earlier owner keeps its claimed history even while the
        next owner's stitch runs.
        """
        return f"{self._claim}{contact_id}"

    @property
    def claim_pattern(self) -> str:
        """A SCAN/KEYS pattern matching every claim of this visitor."""
        return f"{self._claim}*"


def linked_stream(p: int) -> str:
    """Stream of new events of linked visitors in partition ``p``, drained by the stitcher worker."""
    return f"{PREFIX}:{{{p}}}:linked"


def lease(name: str) -> str:
    """String: the process holding the lease ``name`` (its owner token), with a TTL the holder renews."""
    return f"{PREFIX}:lease:{name}"
