"""The shared limits: the nesting check both the beacon and the contacts API rely on."""

from __future__ import annotations

from typing import Any

import pytest

from tracker.limits import MAX_JSON_DEPTH, deeper_than


def nested(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(levels):
        value = {"a": value} if i % 2 else [value]
    return value


@pytest.mark.parametrize("levels", [1, 2, 5, MAX_JSON_DEPTH])
def test_deeper_than_counts_the_value_itself_as_the_first_level(levels: int) -> None:
    """A value of n levels is not deeper than n, and is deeper than n - 1."""
    value = nested(levels)
    assert not deeper_than(value, levels)
    assert deeper_than(value, levels - 1)


def test_deeper_than_flat_and_empty_values() -> None:
    """Flat objects and arrays are one level; empty containers count as a level."""
    assert not deeper_than({"a": 1, "b": "x", "c": None}, 1)
    assert deeper_than({"a": {}}, 1) and not deeper_than({"a": {}}, 2)
    assert deeper_than([[]], 1)


def test_deeper_than_never_recurses_past_the_limit() -> None:
    """A value nested far past Python's recursion limit is judged without a RecursionError."""
    value: Any = 1
    for _ in range(100_000):
        value = [value]
    assert deeper_than(value, MAX_JSON_DEPTH)
