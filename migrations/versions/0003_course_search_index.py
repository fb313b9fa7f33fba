"""course search index

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 23:17:23.711142

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


SEARCH_VECTOR = (
    "to_tsvector('simple'::regconfig, (((COALESCE(title, ''::character varying)::text || "
    "' '::text) || COALESCE(short_description, ''::character varying)::text) || ' '::text) || "
    "COALESCE(description, ''::text))"
)


def upgrade():
    # Full-text search is PostgreSQL's; SQLite searches with LIKE and needs no index.
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_index("ix_courses_search", "courses", [sa.literal_column(SEARCH_VECTOR)],
                    unique=False, postgresql_using="gin")


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_courses_search", table_name="courses", postgresql_using="gin")
