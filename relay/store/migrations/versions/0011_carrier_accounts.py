"""carrier accounts; numbers and carrier message ids scoped by the carrier account

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 18:30:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

ACTIVE = sa.text('released_at IS NULL')
# Numbers and texts stored before carrier accounts: the sim's belong to their project's sim
# account; every other carrier's to the deployment's own account (RELAY_TWILIO_*).
NUMBER_KEY = "CASE WHEN provider = 'sim' THEN 'sim:' || project_id ELSE provider || ':' || 'deployment' END"


def upgrade() -> None:
    op.create_table(
        'carrier_accounts',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('project_id', sa.String(length=40), nullable=False),
        sa.Column('provider', sa.String(length=20), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=True),
        sa.Column('account_sid', sa.String(length=100), nullable=True),
        sa.Column('credentials', sa.Text(), nullable=True),
        sa.Column('credentials_hint', sa.String(length=20), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('carrier_accounts', schema=None) as batch_op:
        batch_op.create_index('ix_carrier_accounts_project', ['project_id', 'id'], unique=False)
        batch_op.create_index('ix_carrier_accounts_sid', ['provider', 'account_sid'], unique=False)

    with op.batch_alter_table('numbers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('carrier_account_id', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('carrier_key', sa.String(length=120), nullable=True))
    op.execute(f"UPDATE numbers SET carrier_key = {NUMBER_KEY}")
    with op.batch_alter_table('numbers', schema=None) as batch_op:
        batch_op.alter_column('carrier_key', existing_type=sa.String(length=120), nullable=False)
        batch_op.create_foreign_key(
            'fk_numbers_carrier_account_id_carrier_accounts',
            'carrier_accounts',
            ['carrier_account_id'],
            ['id'],
            ondelete='SET NULL',
        )
        batch_op.drop_index('uq_numbers_active_phone', sqlite_where=ACTIVE, postgresql_where=ACTIVE)
        batch_op.create_index(
            'uq_numbers_active_route',
            ['carrier_key', 'phone_number'],
            unique=True,
            sqlite_where=ACTIVE,
            postgresql_where=ACTIVE,
        )

    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('carrier_key', sa.String(length=120), nullable=True))
    op.execute(
        "UPDATE messages SET carrier_key = COALESCE("
        "(SELECT numbers.carrier_key FROM numbers WHERE numbers.id = messages.number_id), "
        "CASE WHEN provider = 'sim' THEN 'sim:' || project_id ELSE provider || ':' || 'deployment' END)"
    )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('uq_messages_carrier_id')
        batch_op.create_index(
            'uq_messages_carrier_id', ['carrier_key', 'carrier_message_id'], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('uq_messages_carrier_id')
        batch_op.create_index(
            'uq_messages_carrier_id', ['provider', 'carrier_message_id'], unique=True
        )
        batch_op.drop_column('carrier_key')
    with op.batch_alter_table('numbers', schema=None) as batch_op:
        batch_op.drop_index('uq_numbers_active_route', sqlite_where=ACTIVE, postgresql_where=ACTIVE)
        batch_op.create_index(
            'uq_numbers_active_phone',
            ['phone_number'],
            unique=True,
            sqlite_where=ACTIVE,
            postgresql_where=ACTIVE,
        )
        batch_op.drop_constraint('fk_numbers_carrier_account_id_carrier_accounts', type_='foreignkey')
        batch_op.drop_column('carrier_key')
        batch_op.drop_column('carrier_account_id')
    with op.batch_alter_table('carrier_accounts', schema=None) as batch_op:
        batch_op.drop_index('ix_carrier_accounts_sid')
        batch_op.drop_index('ix_carrier_accounts_project')
    op.drop_table('carrier_accounts')
