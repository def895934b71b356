"""identity_log.request_id as wide as the X-Request-Id the edge accepts (128)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlmodel.sql.sqltypes
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite rebuilds the table: keep AUTOINCREMENT, so that no erased row's id is reused
    with op.batch_alter_table('identity_log', schema=None, table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.alter_column('request_id', existing_type=sqlmodel.sql.sqltypes.AutoString(length=64),
                              type_=sqlmodel.sql.sqltypes.AutoString(length=128), existing_nullable=True)


def downgrade() -> None:
    # ids longer than 64 characters do not fit back: cut them (the request id only correlates log lines)
    op.execute("UPDATE identity_log SET request_id = substr(request_id, 1, 64) WHERE length(request_id) > 64")
    with op.batch_alter_table('identity_log', schema=None, table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.alter_column('request_id', existing_type=sqlmodel.sql.sqltypes.AutoString(length=128),
                              type_=sqlmodel.sql.sqltypes.AutoString(length=64), existing_nullable=True)
