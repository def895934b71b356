"""Domain errors that the HTTP edge turns into a JSON error body (``{"error", "message", ...}``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class DomainError(Exception):
    """Base of every error the error middleware translates; ``status`` and ``code`` shape the response."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra: Mapping[str, Any] = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


class ValidationFailed(DomainError):
    """One or more fields are invalid; ``errors`` names each as ``{"field", "message"}``."""

    code = "validation_failed"

    def __init__(self, errors: list[dict[str, str]]) -> None:
        message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        super().__init__(message, errors=errors)
        self.errors = errors


class RequestTimeout(DomainError):
    """The request did not arrive in the time it is given (a slow or stalled client)."""

    status = 408
    code = "request_timeout"


class PayloadTooLarge(DomainError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(DomainError):
    status = 415
    code = "unsupported_media_type"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Unavailable(DomainError):
    status = 503
    code = "unavailable"
