"""The HTTP status of each identity error: the one place where the domain's errors meet HTTP."""

from __future__ import annotations

from stitcher.domain.errors import (
    ConcurrentUpdate,
    ContactNotFound,
    ExternalIdConflict,
    ImportNotFound,
    ImportsBusy,
    ValidationFailed,
)

# most specific first; the edge answers the first class an error is an instance of
STATUS: dict[type[Exception], int] = {
    ValidationFailed: 400,
    ContactNotFound: 404,
    ImportNotFound: 404,
    ImportsBusy: 429,
    ExternalIdConflict: 409,
    ConcurrentUpdate: 409,
}
