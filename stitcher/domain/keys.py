"""How identity keys are spelt (``id:<contactId>``, ``ext:<id>``, ``<kind>:<value>``, ``vid:<visitor>``,
``order:<id>``): pure, so that the import's parser process works out a row's keys without loading the store.
``stitcher.store.identity_keys`` locks them and finds the keys of stored contacts."""

from __future__ import annotations

from collections.abc import Sequence

from stitcher.domain.identifiers import Identity


def visitor(vid: str) -> str:
    """The key of one visitor (a stitch, the worker and a merge of its contact serialise on it)."""
    return f"vid:{vid}"


def order(external_order_id: str) -> str:
    """The key of one order: two requests posting the same order serialise on it."""
    return f"order:{external_order_id}"


def of_request(identity: Identity, visitors: Sequence[str]) -> list[str]:
    """The keys of the identifiers and visitors one request names."""
    # a StrEnum formats as its value
    keys = [f"{k}:{v}" for k, v in identity.channels] + [visitor(v) for v in visitors]
    if identity.external_id is not None:
        keys.append(f"ext:{identity.external_id}")
    if identity.contact_id is not None:
        keys.append(f"id:{identity.contact_id}")
    return keys
