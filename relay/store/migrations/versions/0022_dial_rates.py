"""dial rates: a carrier's calls-per-second limit shared by every relay on the database

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-08 02:20:00.000000
"""

import sqlalchemy as sa
from alembic import op


revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'dial_rates',
        sa.Column('carrier', sa.String(length=40), nullable=False),
        sa.Column('tat', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('carrier'),
    )


def downgrade() -> None:
    op.drop_table('dial_rates')
