"""live session end time

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 23:35:55.575491

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    # Added nullable, filled from start_time + duration_minutes, then made required, so the
    # migration also works on a database that already has sessions.
    with op.batch_alter_table('live_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('end_time', sa.DateTime(timezone=True), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("UPDATE live_sessions "
                   "SET end_time = start_time + duration_minutes * interval '1 minute'")
    else:
        op.execute("UPDATE live_sessions SET end_time = "
                   "datetime(start_time, '+' || duration_minutes || ' minutes')")
    with op.batch_alter_table('live_sessions', schema=None) as batch_op:
        batch_op.alter_column('end_time', existing_type=sa.DateTime(timezone=True),
                              nullable=False)
        batch_op.create_index(batch_op.f('ix_live_sessions_end_time'), ['end_time'], unique=False)


def downgrade():
    with op.batch_alter_table('live_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_live_sessions_end_time'))
        batch_op.drop_column('end_time')
