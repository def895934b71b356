"""api_events: the events API's idempotency records and held events (events for people not yet known)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('held_key', sqlmodel.sql.sqltypes.AutoString(length=1100), nullable=True),
    sa.Column('contact_id', sa.BigInteger(), nullable=True),
    sa.Column('type', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('data', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('occurred_at', sa.BigInteger(), nullable=False),
    sa.Column('received_at', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('event_id'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('api_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_events_held_key'), ['held_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_api_events_expires_at'), ['expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('api_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_events_expires_at'))
        batch_op.drop_index(batch_op.f('ix_api_events_held_key'))
    op.drop_table('api_events')
