"""scale indexes: the lists that read a whole table at ten times the data (issue 21)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 07:30:00

Found with EXPLAIN ANALYZE on bench/scale.py's 10x database: each of these lists sorted or
filtered every row of its table to show a page of twenty.
"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

INDEXES = (
    ("certificates", "ix_certificates_issued_id", ["issued_at", "id"]),
    ("contact_forms", "ix_contact_forms_created_id", ["created_at", "id"]),
    ("enrollments", "ix_enrollments_course_enrolled_id", ["course_id", "enrolled_at", "id"]),
    ("refund_requests", "ix_refund_requests_created_id", ["created_at", "id"]),
    ("users", "ix_users_role_created_id", ["role", "created_at", "id"]),
)


def upgrade():
    for table, name, columns in INDEXES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(name, columns, unique=False)


def downgrade():
    for table, name, _columns in reversed(INDEXES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(name)
