"""dashboard: server-side login sessions, login throttle, review sessions, field-level revisions

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 07:30:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'login_sessions',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('user', sa.String(length=100), nullable=False),
        sa.Column('client', sa.String(length=100), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('revoked_why', sa.String(length=50), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_login_sessions_user', 'login_sessions', ['user'])
    op.create_table(
        'login_throttle',
        sa.Column('key', sa.String(length=200), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
        sa.Column('locked_until', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('key'),
    )
    op.create_table(
        'review_sessions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user', sa.String(length=100), nullable=False),
        sa.Column('dataset_id', sa.Integer(), nullable=False),
        sa.Column('params', sa.JSON(), nullable=False),
        sa.Column('member_ids', sa.JSON(), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_review_sessions_user', 'review_sessions', ['user'])
    op.create_index('ix_review_sessions_dataset_id', 'review_sessions', ['dataset_id'])
    # plain ADD COLUMN (no batch copy): recreating members on SQLite would cascade-delete its tags
    op.add_column('members', sa.Column('caption_revision', sa.Integer(), server_default=sa.text('0'), nullable=False))
    op.add_column('members', sa.Column('status_revision', sa.Integer(), server_default=sa.text('0'), nullable=False))
    op.add_column('tags', sa.Column('revision', sa.Integer(), server_default=sa.text('0'), nullable=False))
    # tags were stored escaped for prompts ("star \(symbol\)"); they are stored plain now and escaped on export
    plain = "REPLACE(REPLACE(tags.text, '\\(', '('), '\\)', ')')"
    op.execute(f"UPDATE tags SET text = {plain} WHERE tags.text LIKE '%\\%' ESCAPE '!' AND NOT EXISTS "
               f"(SELECT 1 FROM tags AS twin WHERE twin.member_id = tags.member_id AND twin.text = {plain})")


def downgrade() -> None:
    with op.batch_alter_table('tags', schema=None) as batch_op:
        batch_op.drop_column('revision')
    with op.batch_alter_table('members', schema=None) as batch_op:
        batch_op.drop_column('status_revision')
        batch_op.drop_column('caption_revision')
    op.drop_index('ix_review_sessions_dataset_id', table_name='review_sessions')
    op.drop_index('ix_review_sessions_user', table_name='review_sessions')
    op.drop_table('review_sessions')
    op.drop_table('login_throttle')
    op.drop_index('ix_login_sessions_user', table_name='login_sessions')
    op.drop_table('login_sessions')
