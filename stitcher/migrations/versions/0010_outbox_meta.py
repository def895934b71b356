"""outbox meta: a send's languageCode, tags and externalRequestId; receipts pruned by age

``language_code`` is the language the send was rendered for (the recipient's ``languageCode``, else the
contact's), ``tags`` the one-off email's tags, ``external_request_id`` the client's own id for the request
(the platform's ``externalRequestId``: the outbox is read back by it, hence its index). ``send_receipts`` get
an index on ``created_at`` for the sweep that deletes receipts past their retention.

Revision ID: 0010_outbox_meta
Revises: 0009_exports
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0010_outbox_meta'
down_revision = '0009_exports'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('language_code', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True))
        batch_op.add_column(sa.Column('tags', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()),
                                                                     'postgresql'), nullable=True))
        batch_op.add_column(sa.Column('external_request_id', sqlmodel.sql.sqltypes.AutoString(length=256),
                                      nullable=True))
        batch_op.create_index('ix_outbox_external_request', ['external_request_id', 'id'], unique=False)
    with op.batch_alter_table('send_receipts', schema=None) as batch_op:
        batch_op.create_index('ix_send_receipts_created', ['created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('send_receipts', schema=None) as batch_op:
        batch_op.drop_index('ix_send_receipts_created')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_external_request')
        batch_op.drop_column('external_request_id')
        batch_op.drop_column('tags')
        batch_op.drop_column('language_code')
