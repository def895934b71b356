"""Points in time as clients send them (``domain.instants``): ISO 8601 forms, epoch seconds, the bounds."""

from __future__ import annotations

from typing import Any

import pytest

from stitcher.domain.instants import BadInstant, read_instant


@pytest.mark.parametrize(("value", "ms"), [
    ("2020-05-14", 1589414400000),  # the platform's date format
    ("2020-05-14T10:11", 1589451060000),  # its date-and-time format, UTC without an offset
    ("2017-05-14T10:11:10.7022176+03:00", 1494745870702),  # the order export's, seven fractional digits
    (" 2020-05-14T10:11:00Z ", 1589451060000),
    ("1970-01-01T00:00:00Z", 0),
])
def test_iso_8601_forms(value: str, ms: int) -> None:
    """Every ISO 8601 form clients send reads to the same Unix milliseconds; no offset means UTC."""
    assert read_instant(value) == ms


def test_epoch_seconds_only_where_the_field_allows_them() -> None:
    """A JSON number is seconds since 1970 for a field read with ``epoch``; elsewhere it is refused."""
    assert read_instant(1589440260, epoch=True) == 1589440260000
    assert read_instant(1589440260.25, epoch=True) == 1589440260250
    with pytest.raises(BadInstant, match="ISO 8601"):
        read_instant(1589440260)


@pytest.mark.parametrize("value", [
    "", "soon", "2020-02-30", "x" * 65, None, True, [], {}, -1, float("nan"), float("inf"), 1589440260000,
    "1969-12-31T23:59:59Z", "2201-01-01", "0001-01-01T00:00+14:00", "9999-12-31T23:59-14:00",
])
def test_what_is_no_sane_time_is_refused_with_a_reason(value: Any) -> None:
    """Other types, malformed text, milliseconds where seconds belong and years outside 1970-2200 raise."""
    with pytest.raises(BadInstant) as info:
        read_instant(value, epoch=True)
    assert str(info.value).startswith("must ")


def test_a_latest_bound_refuses_the_future() -> None:
    """``latest_ms`` refuses a time after it, whatever its form."""
    assert read_instant("2020-05-14", latest_ms=1589414400000) == 1589414400000
    for value in ("2020-05-14T00:00:01Z", 1589414401):
        with pytest.raises(BadInstant, match="future"):
            read_instant(value, epoch=True, latest_ms=1589414400000)
