"""calls.answered_by: who the carrier's answering-machine detection says picked up

Revision ID: 0020
Revises: 0022
Create Date: 2026-12-08 01:40:00.000000
"""

import sqlalchemy as sa
from alembic import op


revision = '0020'
down_revision = '0022'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('calls') as batch:
        batch.add_column(sa.Column('answered_by', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('calls') as batch:
        batch.drop_column('answered_by')
