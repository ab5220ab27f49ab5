"""an index on a call's carrier call id, which a replayed carrier request is looked up by

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 16:30:00.000000
"""

from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_calls_carrier_call', 'calls', ['carrier_call_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_calls_carrier_call', table_name='calls')
