"""The identity errors know nothing of HTTP; the HTTP layer's table gives each the status SPEC §3 names."""

from __future__ import annotations

from stitcher import http_errors
from stitcher.domain import errors
from tracker import errors as edge_errors


def status_of(exc: Exception) -> int | None:
    return next((s for cls, s in http_errors.STATUS.items() if isinstance(exc, cls)), None)


def test_each_identity_error_has_its_status() -> None:
    """400 for invalid input, 404 for an unknown contact, 409 for an identity conflict or a request that
    kept colliding."""
    assert status_of(errors.ValidationFailed([{"field": "f", "message": "m"}])) == 400
    assert status_of(errors.InvalidIdentifier("f", "m")) == 400
    assert status_of(errors.ContactNotFound(3)) == 404
    assert status_of(errors.ExternalIdConflict("C-1", 7, 8)) == 409
    assert status_of(errors.ConcurrentUpdate()) == 409


def test_the_domain_errors_do_not_derive_from_the_edges_http_errors() -> None:
    """stitcher/domain stands on its own: none of its errors is an HTTP error of the tracker edge."""
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert not issubclass(cls, edge_errors.DomainError), name
        assert not hasattr(cls, "status"), name
