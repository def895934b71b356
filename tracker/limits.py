"""Limits shared by the edge, the beacon, the contacts API and the store, so that each is written once."""

from __future__ import annotations

from typing import Any

# Objects and arrays nest at most this deep in any JSON body or value the service accepts: a contacts API body
# counted from the body, a beacon event's ``props`` counted from the props object. Well below what orjson
# encodes (~255 levels, a TypeError past it) and what the parsers recurse through.
MAX_JSON_DEPTH = 32
# The longest X-Request-Id taken from a caller (echoed, logged, stored in identity_log.request_id).
MAX_REQUEST_ID = 128
_CONTAINERS = (dict, list)  # a tuple: ``dict | list`` would build a union object on every call


def deeper_than(value: dict[str, Any] | list[Any], limit: int) -> bool:
    """Whether ``value`` (level 1) holds objects or arrays nested more than ``limit`` levels deep.

    Recursion stops at ``limit``, so any parsed value can be checked; a flat object costs one pass over its
    values.
    """
    if limit < 1:
        return True
    for child in value.values() if isinstance(value, dict) else value:
        if isinstance(child, _CONTAINERS) and deeper_than(child, limit - 1):
            return True
    return False
