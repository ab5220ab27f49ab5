"""lifecycle events

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 14:36:06.536801
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table('lifecycle_events',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('project_id', sa.String(length=40), nullable=False),
    sa.Column('type', sa.String(length=40), nullable=False),
    sa.Column('ordering_key', sa.String(length=60), nullable=True),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('lifecycle_events', schema=None) as batch_op:
        batch_op.create_index('ix_lifecycle_events_pending', ['dispatched_at', 'id'], unique=False)
        batch_op.create_index('ix_lifecycle_events_project', ['project_id', 'id'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('lifecycle_events', schema=None) as batch_op:
        batch_op.drop_index('ix_lifecycle_events_project')
        batch_op.drop_index('ix_lifecycle_events_pending')

    op.drop_table('lifecycle_events')

