"""a lifecycle endpoint's previous secret, which still signs during a rotation's grace period

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 10:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('webhook_endpoints', schema=None) as batch_op:
        batch_op.add_column(sa.Column('previous_secret', sa.String(length=100), nullable=True))
        batch_op.add_column(
            sa.Column('previous_secret_expires_at', sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table('webhook_endpoints', schema=None) as batch_op:
        batch_op.drop_column('previous_secret_expires_at')
        batch_op.drop_column('previous_secret')
