"""a publishable key's allowed origins and destinations, and what its calls may carry

Keys made before this revision: no origins (no web page may use them; server-side use
without an Origin header goes on), destinations of their caller number's country only, no
variables or postCall, metadata up to 1 KiB. Secret keys are not limited by any of these.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 18:10:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('allowed_origins', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('allowed_destinations', sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column('allow_variables', sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(
            sa.Column('allow_post_call', sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column('max_metadata_bytes', sa.Integer(), nullable=True))
    op.execute(
        "UPDATE api_keys SET max_metadata_bytes = 1024 WHERE kind = 'publishable'"
    )


def downgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('max_metadata_bytes')
        batch_op.drop_column('allow_post_call')
        batch_op.drop_column('allow_variables')
        batch_op.drop_column('allowed_destinations')
        batch_op.drop_column('allowed_origins')
