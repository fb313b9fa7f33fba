"""tallies: the admin figures kept as the rows they add up change (issue 21)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 23:55:00

The admin dashboard and analytics summed users, enrollments and payments on each
recomputation: 5-6x slower at ten times the learners. On PostgreSQL, triggers on the three
tables now append each statement's change to `tallies` (utils/tallies.py), filled here from the
rows already there while writers of those tables wait.
"""
from alembic import op
import sqlalchemy as sa

from utils import tallies


# revision identifiers, used by Alembic.
revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('tallies',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('bucket', sa.String(length=80), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('amount', sa.Numeric(precision=20, scale=2), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tallies'))
    )
    with op.batch_alter_table('tallies', schema=None) as batch_op:
        batch_op.create_index('ix_tallies_name_bucket', ['name', 'bucket'], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        for statement in [*tallies.trigger_ddl(), *tallies.recount_sql()]:
            op.execute(statement)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        for statement in tallies.drop_ddl():
            op.execute(statement)
    with op.batch_alter_table('tallies', schema=None) as batch_op:
        batch_op.drop_index('ix_tallies_name_bucket')
    op.drop_table('tallies')
