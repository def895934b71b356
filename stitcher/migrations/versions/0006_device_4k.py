"""identifiers.device holds a push channel's device JSON whole, up to 4096 characters (was 256)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlmodel.sql.sqltypes
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # PostgreSQL widens a varchar without rewriting the table; SQLite rebuilds it (keeping AUTOINCREMENT)
    with op.batch_alter_table('identifiers', schema=None, table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.alter_column('device', existing_type=sqlmodel.sql.sqltypes.AutoString(length=256),
                              type_=sqlmodel.sql.sqltypes.AutoString(length=4096), existing_nullable=True)


def downgrade() -> None:
    # a device longer than 256 characters was not kept before: drop it (cut JSON would no longer parse)
    op.execute("UPDATE identifiers SET device = NULL WHERE length(device) > 256")
    with op.batch_alter_table('identifiers', schema=None, table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.alter_column('device', existing_type=sqlmodel.sql.sqltypes.AutoString(length=4096),
                              type_=sqlmodel.sql.sqltypes.AutoString(length=256), existing_nullable=True)
