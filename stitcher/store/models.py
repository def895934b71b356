"""SQLModel tables. Times are Unix milliseconds (BIGINT) so SQLite and PostgreSQL behave alike."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from tracker.limits import MAX_REQUEST_ID

# BIGINT primary keys autoincrement on PostgreSQL; SQLite only autoincrements "INTEGER PRIMARY KEY"
BigId = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")
# ids are handed to API clients: SQLite must never reuse the id of an erased row (max(rowid)+1 would)
SQLITE_AUTOINCREMENT = {"sqlite_autoincrement": True}
LIVE = "deleted_at IS NULL AND merged_into_id IS NULL"
LIVE_NO_EXTERNAL_ID = f"external_customer_id IS NULL AND {LIVE}"


def _ms() -> Any:
    return Field(sa_type=BigInteger)


def _change_seq() -> Any:
    """Stamped by the database's triggers on every insert and update (migration 0009), never by the code:
    what the exports read changes by."""
    return Field(default=None, sa_type=BigInteger)


def _fk(target: str, *, index: bool = True, nullable: bool = False) -> Any:
    return Field(sa_column=Column(BigId, ForeignKey(target, ondelete="CASCADE"), index=index,
                                  nullable=nullable))


class Contact(SQLModel, table=True):
    """A person. ``external_customer_id`` is the only unique identifier (SPEC §1, DESIGN invariant 6)."""

    __tablename__ = "contacts"
    __table_args__ = (
        # groups read live contacts by id (stitcher.store.segments); the seed's check, "no external ID", too
        Index("ix_contacts_live", "id", sqlite_where=text(LIVE), postgresql_where=text(LIVE)),
        Index("ix_contacts_live_no_external_id", "id", sqlite_where=text(LIVE_NO_EXTERNAL_ID),
              postgresql_where=text(LIVE_NO_EXTERNAL_ID)),
        # no index on change_seq (migration 0010): every update changes it, and an indexed column changed
        # makes PostgreSQL write a new entry in every index of the row (no HOT update); exports scan instead
        SQLITE_AUTOINCREMENT,
    )
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    external_customer_id: str | None = Field(default=None, sa_column=Column(String(256), unique=True))
    first_name: str | None = Field(default=None, max_length=256)
    last_name: str | None = Field(default=None, max_length=256)
    language_code: str | None = Field(default=None, max_length=16)
    address: dict[str, Any] | None = Field(default=None, sa_type=Json)
    custom_fields: list[dict[str, Any]] | None = Field(default=None, sa_column=Column("fields", Json))
    created_at: int = _ms()
    updated_at: int = _ms()
    deleted_at: int | None = Field(default=None, sa_type=BigInteger)
    merged_into_id: int | None = Field(
        default=None, sa_column=Column(BigId, ForeignKey("contacts.id", ondelete="SET NULL"), nullable=True))
    change_seq: int | None = _change_seq()


class Identifier(SQLModel, table=True):
    """A channel value of a contact (email, E.164 phone, push token); shared values are allowed."""

    __tablename__ = "identifiers"
    __table_args__ = (
        UniqueConstraint("contact_id", "kind", "value", name="uq_identifier_contact_kind_value"),
        Index("ix_identifier_kind_value", "kind", "value"),
        SQLITE_AUTOINCREMENT,
    )
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    contact_id: int = _fk("contacts.id", index=False)
    kind: str = Field(max_length=16)
    value: str = Field(max_length=1024)
    device: str | None = Field(default=None, max_length=4096)  # payload.MAX_DEVICE
    created_at: int = _ms()


class VisitorLink(SQLModel, table=True):
    """Which contact a web visitor belongs to, and since when; a shared browser changes hands over time.

    ``stitched_at`` is set once the visitor's anonymous history is on the timeline: a link without it is a
    stitch that has not finished (a crash), which the worker's sweeper completes.
    """

    __tablename__ = "visitor_links"
    __table_args__ = (
        Index("uq_visitor_open_link", "visitor_id", unique=True,
              sqlite_where=text("unlinked_at IS NULL"), postgresql_where=text("unlinked_at IS NULL")),
        SQLITE_AUTOINCREMENT,
    )
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    visitor_id: str = Field(max_length=36, index=True)
    contact_id: int = _fk("contacts.id")
    linked_at: int = _ms()
    unlinked_at: int | None = Field(default=None, sa_type=BigInteger)
    stitched_at: int | None = Field(default=None, sa_type=BigInteger)


class TimelineEvent(SQLModel, table=True):
    """One entry of a contact's timeline; ``(contact_id, event_id)`` is unique (DESIGN invariant 3)."""

    __tablename__ = "timeline"
    __table_args__ = (
        UniqueConstraint("contact_id", "event_id", name="uq_timeline_contact_event"),
        Index("ix_timeline_contact_time", "contact_id", "occurred_at", "id"),
        Index("ix_timeline_change_seq", "change_seq", "id"),
        SQLITE_AUTOINCREMENT,
    )
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    contact_id: int = _fk("contacts.id", index=False)
    event_id: str = Field(max_length=64)
    source: str = Field(max_length=16)  # web | api | order
    type: str = Field(max_length=128)
    occurred_at: int = _ms()
    received_at: int = _ms()
    visitor_id: str | None = Field(default=None, max_length=36)
    data: dict[str, Any] | None = Field(default=None, sa_type=Json)
    change_seq: int | None = _change_seq()


class Group(SQLModel, table=True):
    """A group: static (members in ``group_members``) or dynamic (``conditions`` joined by ``match``, as the
    client gave them; evaluated when read, see ``stitcher.store.segments``)."""

    __tablename__ = "groups"
    __table_args__ = (SQLITE_AUTOINCREMENT,)
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    name: str = Field(sa_column=Column(String(256), unique=True, nullable=False))
    type: str = Field(default="static", max_length=16)
    conditions: list[dict[str, Any]] | None = Field(default=None, sa_type=Json)
    match: str = Field(default="all", max_length=8, sa_column_kwargs={"server_default": "all"})
    created_at: int = _ms()


class GroupMember(SQLModel, table=True):
    __tablename__ = "group_members"
    group_id: int = Field(sa_column=Column(BigId, ForeignKey("groups.id", ondelete="CASCADE"),
                                           primary_key=True))
    contact_id: int = Field(sa_column=Column(BigId, ForeignKey("contacts.id", ondelete="CASCADE"),
                                             primary_key=True, index=True))
    form_type: str | None = Field(default=None, max_length=128)
    added_at: int = _ms()


class IdentityLog(SQLModel, table=True):
    """Audit of every identity change (DESIGN invariant 9): link, assign ID, merge, restore, delete, erase.

    Not a foreign key: the record of an erase outlives the contact it names.
    """

    __tablename__ = "identity_log"
    __table_args__ = (SQLITE_AUTOINCREMENT,)
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    contact_id: int = Field(sa_type=BigInteger, index=True)
    action: str = Field(max_length=32)
    detail: dict[str, Any] | None = Field(default=None, sa_type=Json)
    at: int = _ms()
    request_id: str | None = Field(default=None, max_length=MAX_REQUEST_ID)  # the X-Request-Id the edge took


class ImportSession(SQLModel, table=True):
    """A bulk import (``POST /api/v1/contacts``): its request, progress and counters, so it survives a restart.

    Rows ``[0, next_row)`` are applied, each with its ``ImportRow``, written in the chunk's transaction;
    ``request`` (the body's contacts and options) is kept until the import ends, for a restart to resume it.
    """

    __tablename__ = "imports"
    id: str = Field(sa_column=Column(String(36), primary_key=True))
    status: str = Field(max_length=16, index=True)
    description: str | None = Field(default=None, sa_type=Text)
    total: int
    next_row: int = 0
    created: int = 0
    updated: int = 0
    restored: int = 0
    skipped: int = 0
    failed: int = 0
    request: dict[str, Any] | None = Field(default=None, sa_type=Json)
    request_id: str | None = Field(default=None, max_length=MAX_REQUEST_ID)
    created_at: int = _ms()
    updated_at: int = _ms()


class ImportRow(SQLModel, table=True):
    """What one row of an import did: the contact it landed on and how, or why it failed or was skipped.

    ``contact_id`` is no foreign key: the record of an import outlives an erased contact.
    """

    __tablename__ = "import_rows"
    import_id: str = Field(sa_column=Column(String(36), ForeignKey("imports.id", ondelete="CASCADE"),
                                            primary_key=True))
    idx: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    contact_id: int | None = Field(default=None, sa_type=BigInteger)
    action: str = Field(max_length=16)  # created | updated | restored | skipped | failed
    error: str | None = Field(default=None, sa_type=Text)
class Order(SQLModel, table=True):
    """A shop's order (POST /api/v1/orders), upserted by ``external_order_id``; it follows its contact through
    merges and goes with it on erase (the foreign key cascades).

    ``data`` is the order as the API shows it (the platform's field names, items included); the columns
    beside it are what lists and exports filter and sort on.
    """

    __tablename__ = "orders"
    __table_args__ = (
        Index("ix_orders_contact_time", "contact_id", "ordered_at", "id"),
        Index("ix_orders_change_seq", "change_seq", "id"),
        SQLITE_AUTOINCREMENT,
    )
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    external_order_id: str = Field(sa_column=Column(String(256), unique=True, nullable=False))
    contact_id: int = _fk("contacts.id", index=False)
    status: str = Field(max_length=32)
    ordered_at: int = _ms()
    data: dict[str, Any] = Field(sa_type=Json)
    created_at: int = _ms()
    updated_at: int = _ms()
    change_seq: int | None = _change_seq()


class ApiEvent(SQLModel, table=True):
    """An event posted to the events API (``stitcher.events``): its idempotency record (when sent with a
    key), and — while nobody it names is known yet — the held event itself.

    ``held_key`` is the identity key it waits under (``identity_keys`` spelling); ``attach`` moves it onto a
    timeline when a contact gets that identifier, sets ``contact_id`` and clears ``held_key`` and ``data``.
    Every row goes at ``expires_at``: a held event unclaimed by then, a receipt once its resend window ends.
    ``contact_id`` is not a foreign key: a receipt outlives an erased contact (it holds no personal data).
    """

    __tablename__ = "api_events"
    __table_args__ = (SQLITE_AUTOINCREMENT,)
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    event_id: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    held_key: str | None = Field(default=None, max_length=1100, index=True)
    contact_id: int | None = Field(default=None, sa_type=BigInteger)
    type: str = Field(max_length=128)
    data: dict[str, Any] | None = Field(default=None, sa_type=Json)
    occurred_at: int = _ms()
    received_at: int = _ms()
    expires_at: int = Field(sa_type=BigInteger, index=True)


class Message(SQLModel, table=True):
    """A prepared message (``POST /api/v1/messages``): its templates, rendered per recipient at send time."""

    __tablename__ = "messages"
    __table_args__ = (SQLITE_AUTOINCREMENT,)
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    channel: str = Field(max_length=16)  # email | sms
    name: str = Field(max_length=256)
    subject: str | None = Field(default=None, sa_type=Text)
    sender: str | None = Field(default=None, max_length=320)
    body: str = Field(sa_type=Text)
    created_at: int = _ms()


class OutboxEntry(SQLModel, table=True):
    """One send to one contact, rendered: what the delivery worker delivers and the API reads back.

    ``message_id`` is None for a one-off email. It follows its contact through merges and goes with it on
    erase (the foreign key cascades); ``state`` is queued | sent | failed, retried at ``next_attempt_at``.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "state", "next_attempt_at"),
        Index("ix_outbox_message", "message_id", "id"),
        Index("ix_outbox_contact", "contact_id", "id"),
        Index("ix_outbox_external_request", "external_request_id", "id"),
        SQLITE_AUTOINCREMENT,
    )
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    message_id: int | None = Field(default=None, sa_column=Column(BigId, ForeignKey("messages.id"), nullable=True))
    contact_id: int = _fk("contacts.id", index=False)
    channel: str = Field(max_length=16)
    address: str = Field(max_length=1024)
    sender: str | None = Field(default=None, max_length=320)
    subject: str | None = Field(default=None, sa_type=Text)
    body: str = Field(sa_type=Text)
    plain_text: str | None = Field(default=None, sa_type=Text)
    request_id: str = Field(sa_column=Column(String(36), unique=True, nullable=False))
    state: str = Field(max_length=16)
    attempts: int = 0
    error: str | None = Field(default=None, sa_type=Text)
    next_attempt_at: int = _ms()
    created_at: int = _ms()
    updated_at: int = _ms()
    language_code: str | None = Field(default=None, max_length=16)  # the language it was rendered for
    tags: list[str] | None = Field(default=None, sa_type=Json)  # a one-off email's tags
    external_request_id: str | None = Field(default=None, max_length=256)  # the client's id of the request


class SendReceipt(SQLModel, table=True):
    """The answer to a send made with an ``Idempotency-Key``: a repeat gets it back and sends nothing.

    ``key`` is a digest of what was sent to (a prepared message's id, or the one-off email) and the key.
    """

    __tablename__ = "send_receipts"
    __table_args__ = (Index("ix_send_receipts_created", "created_at"),)
    key: str = Field(sa_column=Column(String(64), primary_key=True))
    answer: dict[str, Any] = Field(sa_type=Json)
    created_at: int = _ms()


class ExportTombstone(SQLModel, table=True):
    """A deleted contacts, timeline or orders row (an erase, a merge's duplicate events), written by a
    trigger with the change sequence of its delete, so the exports remove it from their targets."""

    __tablename__ = "export_tombstones"
    __table_args__ = (Index("ix_export_tombstones_seq", "seq", "id"), SQLITE_AUTOINCREMENT)
    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    seq: int = Field(sa_type=BigInteger)
    tbl: str = Field(max_length=16)
    row_id: int = Field(sa_type=BigInteger)
    at: int | None = Field(default=None, sa_type=BigInteger)  # ms; written by the trigger (migration 0010)


class ExportSeq(SQLModel, table=True):
    """SQLite's change sequence: one row, bumped by the triggers (PostgreSQL stamps transaction ids)."""

    __tablename__ = "export_seq"
    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    value: int = Field(sa_type=BigInteger)


class ExportSource(SQLModel, table=True):
    """This database as the exports' source: a random id made by migration 0010 (each target keeps the id
    it was exported from, so it is never continued from another database) and how far ``stitcher export
    prune`` deleted tombstones (a target whose watermark is below that has missed deletes)."""

    __tablename__ = "export_source"
    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    source_id: str = Field(max_length=64)
    pruned_seq: int = Field(default=0, sa_type=BigInteger)
    pruned_id: int = Field(default=0, sa_type=BigInteger)
