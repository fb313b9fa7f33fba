"""enrollments by (enrolled_at, id): the dashboard's latest enrollments at any size (issue 21)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08 00:35:00

The admin dashboard lists the five latest enrollments, newest first, ties by id. With an index
on enrolled_at alone, PostgreSQL read every enrollment sharing the newest timestamp, joined
each to its user, then sorted them: 29 ms on make bench-scale's 1x database, 204 ms at 10x
(1,429 rows of one timestamp). With (enrolled_at, id) it reads five. The new index serves every
range the old one did, which it replaces.
"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('enrollments', schema=None) as batch_op:
        batch_op.create_index('ix_enrollments_enrolled_id', ['enrolled_at', 'id'], unique=False)
        batch_op.drop_index('ix_enrollments_enrolled_at')


def downgrade():
    with op.batch_alter_table('enrollments', schema=None) as batch_op:
        batch_op.create_index('ix_enrollments_enrolled_at', ['enrolled_at'], unique=False)
        batch_op.drop_index('ix_enrollments_enrolled_id')
