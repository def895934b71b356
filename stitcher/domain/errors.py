"""Identity errors: plain data about what went wrong, no HTTP. ``stitcher.http_errors`` gives each its status.

Every one carries a stable ``code`` and a human ``message``; ``body()`` is the JSON error body
(``{"error", "message", ...}``) the API answers with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ConcurrentUpdate", "ContactNotFound", "DomainError", "ExternalIdConflict", "FieldErrors",
           "ImportNotFound", "ImportsBusy",
           "InvalidIdentifier", "ValidationFailed"]


class DomainError(Exception):
    """Base of the identity errors."""

    code = "domain_error"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra: Mapping[str, Any] = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


class ValidationFailed(DomainError):
    """One or more fields of a command are invalid; ``errors`` names each as ``{"field", "message"}``."""

    code = "validation_failed"

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)
        self.errors = errors


class FieldErrors:
    """The bad fields found while a body is read, refused together in one ``ValidationFailed``."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, where: str, message: str) -> None:
        self.items.append({"field": where, "message": message})

    def extend(self, exc: ValidationFailed) -> None:
        self.items.extend(exc.errors)

    def raise_if_any(self) -> None:
        if self.items:
            raise ValidationFailed(self.items)


class InvalidIdentifier(ValidationFailed):
    """An identifier is empty, a placeholder or malformed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__([{"field": field, "message": message}])
        self.field = field


class ContactNotFound(DomainError):
    code = "contact_not_found"

    def __init__(self, contact_id: int | None = None, **extra: object) -> None:
        super().__init__(f"contact {contact_id} not found" if contact_id else "contact not found",
                         contactId=contact_id, **extra)
        self.contact_id = contact_id


class ImportNotFound(DomainError):
    """No bulk import has this asyncSessionId."""

    code = "import_not_found"

    def __init__(self, session_id: str) -> None:
        super().__init__("no import has this asyncSessionId", asyncSessionId=session_id)


class ImportsBusy(DomainError):
    """As many import bodies as the service reads at once are being read: the client sends it again shortly."""

    code = "too_many_imports"

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} imports are being received right now; send this one again shortly", limit=limit)


class ExternalIdConflict(DomainError):
    """The external ID in the request belongs to another contact (nothing changes)."""

    code = "identity_conflict"

    def __init__(self, external_id: str, holder_id: int, target_id: int | None = None) -> None:
        super().__init__(
            f"externalCustomerId is held by contact {holder_id}",
            identifier="externalCustomerId", value=external_id, conflictingContactId=holder_id,
            contactId=target_id,
        )
        self.external_id = external_id
        self.holder_id = holder_id
        self.target_id = target_id


class ConcurrentUpdate(DomainError):
    """The contacts a request names kept changing under concurrent requests past the retries."""

    code = "concurrent_update"

    def __init__(self) -> None:
        super().__init__("the contacts this request names keep changing under concurrent requests; retry")
