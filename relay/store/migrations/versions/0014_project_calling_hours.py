"""calling hours on a project: when its outbound calls may ring, by the callee's local time

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 19:00:00.000000
"""

import sqlalchemy as sa
from alembic import op


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.add_column(sa.Column('calling_hours', sa.JSON(), nullable=True))


def downgrade() -> None:
    # Not a batch operation: on SQLite that copies and drops ``projects``, and the drop
    # cascades to every table that references it. SQLite drops a column itself since 3.35.
    op.execute('ALTER TABLE projects DROP COLUMN calling_hours')
