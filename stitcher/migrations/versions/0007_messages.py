"""messages: prepared messages, the outbox of sends and the receipts of idempotent sends

Revision ID: 0007_messages
Revises: 0006
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0007_messages'
down_revision = '0006'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('messages',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('subject', sa.Text(), nullable=True),
    sa.Column('sender', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sqlite_autoincrement=True
    )
    op.create_table('outbox',
    sa.Column('id', _ID, autoincrement=True, nullable=False),
    sa.Column('message_id', _ID, nullable=True),
    sa.Column('contact_id', _ID, nullable=False),
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('address', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
    sa.Column('sender', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
    sa.Column('subject', sa.Text(), nullable=True),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('plain_text', sa.Text(), nullable=True),
    sa.Column('request_id', sa.String(length=36), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('next_attempt_at', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id']),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('request_id'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_due', ['state', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_outbox_message', ['message_id', 'id'], unique=False)
        batch_op.create_index('ix_outbox_contact', ['contact_id', 'id'], unique=False)
    op.create_table('send_receipts',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('answer', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'),
              nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )


def downgrade() -> None:
    op.drop_table('send_receipts')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_contact')
        batch_op.drop_index('ix_outbox_message')
        batch_op.drop_index('ix_outbox_due')
    op.drop_table('outbox')
    op.drop_table('messages')
