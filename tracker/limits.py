"""Limits shared by the edge, the beacon, the contacts API and the store, so that each is written once."""

from __future__ import annotations

# The longest X-Request-Id taken from a caller (echoed, logged, stored in identity_log.request_id).
MAX_REQUEST_ID = 128
