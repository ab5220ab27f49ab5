"""the dialling queue and batches: one job per outbound call's recipient, a cap per project

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 22:00:00.000000
"""

import sqlalchemy as sa
from alembic import op


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.add_column(sa.Column('max_concurrent_calls', sa.Integer(), nullable=True))
    op.create_table(
        'batches',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('project_id', sa.String(length=40), nullable=False),
        sa.Column('agent_id', sa.String(length=40), nullable=True),
        sa.Column('number_id', sa.String(length=40), nullable=True),
        sa.Column('state', sa.String(length=12), nullable=False),
        sa.Column('scheduled_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('window', sa.JSON(), nullable=True),
        sa.Column('max_concurrency', sa.Integer(), nullable=True),
        sa.Column('retry', sa.JSON(), nullable=False),
        sa.Column('invalid', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['agent_id'], ['agents.id'], ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['number_id'], ['numbers.id'], ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_batches_project', 'batches', ['project_id', 'id'])
    op.create_table(
        'dial_jobs',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('project_id', sa.String(length=40), nullable=False),
        sa.Column('batch_id', sa.String(length=40), nullable=True),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('to_number', sa.String(length=40), nullable=False),
        sa.Column('variables', sa.JSON(), nullable=False),
        sa.Column('metadata', sa.JSON(), nullable=False),
        sa.Column('state', sa.String(length=10), nullable=False),
        sa.Column('not_before', sa.DateTime(timezone=True), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('call_id', sa.String(length=40), nullable=True),
        sa.Column('call_ids', sa.JSON(), nullable=False),
        sa.Column('node_id', sa.String(length=100), nullable=True),
        sa.Column('outcome', sa.String(length=40), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_dial_jobs_ready', 'dial_jobs', ['state', 'not_before'])
    op.create_index('ix_dial_jobs_batch', 'dial_jobs', ['batch_id', 'position'])
    op.create_index('ix_dial_jobs_project', 'dial_jobs', ['project_id', 'state'])
    op.create_index('ix_dial_jobs_call', 'dial_jobs', ['call_id'])


def downgrade() -> None:
    op.drop_table('dial_jobs')
    op.drop_table('batches')
    op.execute('ALTER TABLE projects DROP COLUMN max_concurrent_calls')
