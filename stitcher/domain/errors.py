"""Identity errors. They carry data; the HTTP edge turns them into JSON bodies."""

from __future__ import annotations

from tracker.errors import DomainError, NotFound, ValidationFailed

__all__ = ["ContactNotFound", "DomainError", "ExternalIdConflict", "InvalidIdentifier", "ValidationFailed"]


class InvalidIdentifier(ValidationFailed):
    """An identifier is empty, a placeholder or malformed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__([{"field": field, "message": message}])
        self.field = field


class ContactNotFound(NotFound):
    code = "contact_not_found"

    def __init__(self, contact_id: int | None = None, **extra: object) -> None:
        super().__init__(f"contact {contact_id} not found" if contact_id else "contact not found",
                         contactId=contact_id, **extra)
        self.contact_id = contact_id


class ExternalIdConflict(DomainError):
    """The external ID in the request belongs to another contact (409, nothing changes)."""

    status = 409
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
