"""export stamps: no index on contacts.change_seq; tombstones dated; the source's identity

Migration 0009 indexed ``contacts.change_seq``, which every update of a contact changes: PostgreSQL then
cannot make any update of a contact a HOT update (an indexed column changed), so each one writes a new
entry in every index of the table (0 of 15,000 updates HOT, against 97% before; README, Exports). The
exports read the contacts' changes by one scan instead. Tombstones get the time they were written (``at``,
ms) so ``stitcher export prune --older-than DAYS`` can delete old ones, and ``export_source`` holds this
database's random id (which every target keeps with its watermark) and how far tombstones were pruned.

Revision ID: 0011_export_stamps
Revises: 0010_outbox_meta
Create Date: 2026-12-01
"""
from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = '0011_export_stamps'
down_revision = '0010_outbox_meta'
branch_labels = None
depends_on = None

EXPORTED = ('contacts', 'timeline', 'orders')
_PG_NOW_MS = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
_SQLITE_NOW_MS = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"


def _tombstone_triggers(dated: bool) -> None:
    if op.get_bind().dialect.name == 'postgresql':
        columns, values = ("seq, tbl, row_id, at", f"tx, TG_TABLE_NAME, OLD.id, {_PG_NOW_MS}") if dated else \
            ("seq, tbl, row_id", "tx, TG_TABLE_NAME, OLD.id")
        op.execute(f"""
            CREATE OR REPLACE FUNCTION export_tombstone() RETURNS trigger LANGUAGE plpgsql AS $$
            DECLARE tx bigint := pg_current_xact_id()::text::bigint;
            BEGIN INSERT INTO export_tombstones ({columns}) VALUES ({values}); RETURN OLD; END $$""")
        return
    seq = "(SELECT value FROM export_seq)"
    for table in EXPORTED:
        columns, values = ("seq, tbl, row_id, at", f"{seq}, '{table}', OLD.id, {_SQLITE_NOW_MS}") if dated else \
            ("seq, tbl, row_id", f"{seq}, '{table}', OLD.id")
        op.execute(f"DROP TRIGGER {table}_export_tombstone")
        op.execute(f"CREATE TRIGGER {table}_export_tombstone AFTER DELETE ON {table} BEGIN "
                   f"UPDATE export_seq SET value = value + 1; "
                   f"INSERT INTO export_tombstones ({columns}) VALUES ({values}); END")


def upgrade() -> None:
    op.drop_index('ix_contacts_change_seq', table_name='contacts')
    op.add_column('export_tombstones', sa.Column('at', sa.BigInteger(), nullable=True))
    now = _PG_NOW_MS if op.get_bind().dialect.name == 'postgresql' else _SQLITE_NOW_MS
    op.execute(f"UPDATE export_tombstones SET at = {now}")  # the ones before age from now
    _tombstone_triggers(dated=True)
    op.create_table('export_source',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('source_id', sa.String(length=64), nullable=False),
    sa.Column('pruned_seq', sa.BigInteger(), nullable=False),
    sa.Column('pruned_id', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    )
    op.execute(sa.text("INSERT INTO export_source (id, source_id, pruned_seq, pruned_id) VALUES (1, :sid, 0, 0)")
               .bindparams(sid=uuid.uuid4().hex))


def downgrade() -> None:
    op.drop_table('export_source')
    _tombstone_triggers(dated=False)
    op.execute("ALTER TABLE export_tombstones DROP COLUMN at")  # SQLite too (3.35+): its triggers name the table
    op.create_index('ix_contacts_change_seq', 'contacts', ['change_seq', 'id'])
