"""claims name their node: texts being answered and recordings being encoded say which node
holds them, so a survivor takes a dead node's work over at once

Revision ID: 0021
Revises: 0019
Create Date: 2026-12-08 01:40:00.000000
"""

import sqlalchemy as sa
from alembic import op


revision = '0021'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=100), nullable=True))
    with op.batch_alter_table('recordings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('recordings', schema=None) as batch_op:
        batch_op.drop_column('claimed_by')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('claimed_by')
