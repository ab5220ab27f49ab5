"""node commands: what one node asks the node holding a live call to do (end it)

Revision ID: 0019
Revises: 0014
Create Date: 2026-12-07 21:40:00.000000
"""

import sqlalchemy as sa
from alembic import op


revision = '0019'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'node_commands',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('node_id', sa.String(length=100), nullable=False),
        sa.Column('call_id', sa.String(length=40), nullable=False),
        sa.Column('kind', sa.String(length=20), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['call_id'], ['calls.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_node_commands_node', 'node_commands', ['node_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_node_commands_node', table_name='node_commands')
    op.drop_table('node_commands')
