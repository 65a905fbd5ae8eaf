"""training queue (started_at) and slot locks

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 08:10:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('slot_locks',
                    sa.Column('slot', sa.String(length=128), nullable=False),
                    sa.Column('holder', sa.Text(), nullable=False),
                    sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=False),
                    sa.PrimaryKeyConstraint('slot'))
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('started_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.drop_column('started_at')
    op.drop_table('slot_locks')
