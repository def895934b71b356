"""What the CLI prints and how long a paused import waits: no secret on the terminal, no overflow in a long outage."""

from __future__ import annotations

import pytest

from stitcher.cli import hide_password
from stitcher.imports.runner import OUTAGE_RETRY_S, RESUME_RETRY_S, outage_wait


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("rediss+cluster://app:s3cret@a:7000,b:7001", "rediss+cluster://app:***@a:7000,b:7001"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("unix:///var/redis/redis.sock", "unix:///var/redis/redis.sock"),
])
def test_the_redis_url_is_printed_without_its_password(url: str, shown: str) -> None:
    assert hide_password(url) == shown


def test_a_paused_import_waits_longer_each_time_up_to_the_cap_however_long_the_outage() -> None:
    """The wait doubles from OUTAGE_RETRY_S to RESUME_RETRY_S; attempt 1,024 (85 minutes of outage) overflowed
    a float before and ended the import's runner."""
    waits = [outage_wait(a) for a in range(6)]
    assert waits[0] == OUTAGE_RETRY_S and waits == sorted(waits) and waits[-1] == RESUME_RETRY_S
    assert outage_wait(1024) == outage_wait(10**6) == RESUME_RETRY_S
