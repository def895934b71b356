"""groups: a dynamic group's ``match`` (all | any); partial indexes of the live contacts, and of those among
them without an external ID, for group pages and counts

Revision ID: 0008_groups
Revises: 0007_messages
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = '0008_groups'
down_revision = '0007_messages'
branch_labels = None
depends_on = None

LIVE = "deleted_at IS NULL AND merged_into_id IS NULL"
LIVE_NO_EXTERNAL_ID = f"external_customer_id IS NULL AND {LIVE}"


def upgrade() -> None:
    with op.batch_alter_table('groups', schema=None, table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.add_column(sa.Column('match', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False,
                                      server_default='all'))
    op.create_index('ix_contacts_live', 'contacts', ['id'], sqlite_where=sa.text(LIVE),
                    postgresql_where=sa.text(LIVE))
    op.create_index('ix_contacts_live_no_external_id', 'contacts', ['id'],
                    sqlite_where=sa.text(LIVE_NO_EXTERNAL_ID), postgresql_where=sa.text(LIVE_NO_EXTERNAL_ID))


def downgrade() -> None:
    op.drop_index('ix_contacts_live_no_external_id', table_name='contacts')
    op.drop_index('ix_contacts_live', table_name='contacts')
    with op.batch_alter_table('groups', schema=None, table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.drop_column('match')
