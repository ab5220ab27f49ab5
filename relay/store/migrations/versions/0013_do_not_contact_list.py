"""the do-not-contact list: opt-outs a project listed itself, with a reason and a source

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 18:30:00.000000
"""

import sqlalchemy as sa
from alembic import op


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('opt_outs', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('listed_by', sa.String(length=10), nullable=False, server_default='recipient')
        )
        batch_op.add_column(sa.Column('reason', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('source', sa.String(length=100), nullable=True))
        batch_op.alter_column('keyword', existing_type=sa.String(length=20), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM opt_outs WHERE listed_by = 'project' AND keyword IS NULL")
    with op.batch_alter_table('opt_outs', schema=None) as batch_op:
        batch_op.alter_column('keyword', existing_type=sa.String(length=20), nullable=False)
        batch_op.drop_column('source')
        batch_op.drop_column('reason')
        batch_op.drop_column('listed_by')
