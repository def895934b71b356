"""exports: a change sequence on contacts, timeline and orders, and tombstones of deleted rows

Every insert or update of an exported row stamps its ``change_seq`` and every delete leaves a tombstone,
from triggers, so no write path (API, import's COPY, merge moving rows, erase cascading) can forget it.
PostgreSQL stamps the writing transaction's id: an export reads the rows stamped below its snapshot's
``xmin``, which are all committed, and everything written later stamps an id at or above it, so
transactions that commit out of order never slip under the watermark. SQLite stamps a counter (its writers
are serialized). A channel or group membership change stamps its contact (they are contact columns).

Revision ID: 0009_exports
Revises: 0008_groups
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009_exports'
down_revision = '0008_groups'
branch_labels = None
depends_on = None

EXPORTED = ('contacts', 'timeline', 'orders')
CONTACT_PARTS = ('identifiers', 'group_members')


def _postgres() -> None:
    op.execute("""
        CREATE FUNCTION export_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.change_seq := pg_current_xact_id()::text::bigint; RETURN NEW; END $$""")
    op.execute("""
        CREATE FUNCTION export_tombstone() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO export_tombstones (seq, tbl, row_id)
            VALUES (pg_current_xact_id()::text::bigint, TG_TABLE_NAME, OLD.id);
            RETURN OLD;
        END $$""")
    op.execute("""
        CREATE FUNCTION export_touch_contact() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE tx bigint := pg_current_xact_id()::text::bigint;
        BEGIN
            -- a contact this transaction already stamped (created or updated with its channels) is left alone
            IF TG_OP <> 'INSERT' THEN
                UPDATE contacts SET change_seq = tx WHERE id = OLD.contact_id AND change_seq IS DISTINCT FROM tx;
            END IF;
            IF TG_OP <> 'DELETE' THEN
                UPDATE contacts SET change_seq = tx WHERE id = NEW.contact_id AND change_seq IS DISTINCT FROM tx;
            END IF;
            RETURN NULL;
        END $$""")
    for table in EXPORTED:
        op.execute(f"CREATE TRIGGER {table}_export_stamp BEFORE INSERT OR UPDATE ON {table} "
                   "FOR EACH ROW EXECUTE FUNCTION export_stamp()")
        op.execute(f"CREATE TRIGGER {table}_export_tombstone AFTER DELETE ON {table} "
                   "FOR EACH ROW EXECUTE FUNCTION export_tombstone()")
    for table in CONTACT_PARTS:
        op.execute(f"CREATE TRIGGER {table}_export_touch AFTER INSERT OR UPDATE OR DELETE ON {table} "
                   "FOR EACH ROW EXECUTE FUNCTION export_touch_contact()")


def _sqlite() -> None:
    op.execute("INSERT INTO export_seq (id, value) VALUES (1, 0)")
    bump = "UPDATE export_seq SET value = value + 1;"
    seq = "(SELECT value FROM export_seq)"
    for table in EXPORTED:
        stamp = f"UPDATE {table} SET change_seq = {seq} WHERE id = NEW.id;"
        op.execute(f"CREATE TRIGGER {table}_export_insert AFTER INSERT ON {table} BEGIN {bump} {stamp} END")
        # the stamp's own UPDATE sets a new change_seq, so it does not fire this again; one that writes NULL
        # (a whole row written back) is stamped like any other
        op.execute(f"CREATE TRIGGER {table}_export_update AFTER UPDATE ON {table} "
                   f"WHEN NEW.change_seq IS OLD.change_seq OR NEW.change_seq IS NULL BEGIN {bump} {stamp} END")
        op.execute(f"CREATE TRIGGER {table}_export_tombstone AFTER DELETE ON {table} BEGIN {bump} "
                   f"INSERT INTO export_tombstones (seq, tbl, row_id) VALUES ({seq}, '{table}', OLD.id); END")
    for table in CONTACT_PARTS:
        # sets the stamp itself: the contacts trigger fires only on updates that leave change_seq alone
        touch = bump + f" UPDATE contacts SET change_seq = {seq} WHERE id = {{}}.contact_id;"
        op.execute(f"CREATE TRIGGER {table}_export_insert AFTER INSERT ON {table} BEGIN {touch.format('NEW')} END")
        op.execute(f"CREATE TRIGGER {table}_export_update AFTER UPDATE ON {table} "
                   f"BEGIN {touch.format('OLD')} {touch.format('NEW')} END")
        op.execute(f"CREATE TRIGGER {table}_export_delete AFTER DELETE ON {table} BEGIN {touch.format('OLD')} END")


def upgrade() -> None:
    op.create_table('export_tombstones',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('tbl', sa.String(length=16), nullable=False),
    sa.Column('row_id', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sqlite_autoincrement=True
    )
    op.create_table('export_seq',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_export_tombstones_seq', 'export_tombstones', ['seq', 'id'])
    for table in EXPORTED:
        op.add_column(table, sa.Column('change_seq', sa.BigInteger(), nullable=True))
        op.create_index(f'ix_{table}_change_seq', table, ['change_seq', 'id'])
    if op.get_bind().dialect.name == 'postgresql':
        _postgres()
    else:
        _sqlite()
    # rows written before this migration: stamped once, so the first export takes them all
    for table in EXPORTED:
        op.execute(f"UPDATE {table} SET change_seq = NULL")


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == 'postgresql'
    for table in EXPORTED + CONTACT_PARTS:
        for suffix in ('stamp', 'tombstone', 'touch', 'insert', 'update', 'delete'):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_export_{suffix}" + (f" ON {table}" if postgres else ""))
    if postgres:
        op.execute("DROP FUNCTION export_stamp(), export_tombstone(), export_touch_contact()")
    for table in EXPORTED:
        op.drop_index(f'ix_{table}_change_seq', table_name=table)
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column('change_seq')
    op.drop_index('ix_export_tombstones_seq', table_name='export_tombstones')
    op.drop_table('export_seq')
    op.drop_table('export_tombstones')
