"""Running totals the admin figures read instead of adding up whole tables (issue 21).

The admin dashboard and analytics add up users by role, enrollments by status and month, and
completed payments by month, currency and course. Summed over the tables, that cost grows with
the learners (5-6x at ten times the data). Here each of those sums is kept as it changes: every
write to `users`, `enrollments` or `payments` adds its change to the figures (its *tallies*) as
rows of `tallies` (name, bucket, count, amount), and a figure is the sum of its buckets' rows,
whose number depends on the catalog and the calendar, not on the learners.

- What each table adds is written once, in `TALLIED` (SQL over a row `r`), and turned into
  three things: PostgreSQL triggers (`trigger_ddl`) that add what a statement changed (one
  grouped insert per INSERT or DELETE statement, from its transition table; a row trigger for
  an UPDATE of a column a figure reads, and only when its value changed), the same sums
  computed from the tables (`computed_sql`: SQLite, the reference the tests compare with, and
  `recount_sql`, which rebuilds the rows from the tables).
- Writers never touch a shared row: a trigger only appends rows, so two transactions never wait
  on each other for a total and cannot deadlock on one. `compact_sql` folds the appended rows
  into one per bucket (the worker's periodic tick, and a read that finds many); a reader sums
  whatever is there, folded or not, in one statement's snapshot.
- SQLite (the embedded development default) keeps no tallies: its figures are computed from
  the tables, as they always were.

A month is the UTC calendar month as 'YYYY-MM' (the admin figures' `last_months` keys).
"""
from __future__ import annotations

from dataclasses import dataclass

TABLE = "tallies"


@dataclass(frozen=True)
class Tallied:
    """What one figure takes from each row of `table`: a row counts 1 and adds `amount` to the
    bucket `bucket` of `name`, where `where` holds (SQL over the row `r`; `{month:column}`
    stands for the month of a timestamp column, in the database's own SQL)."""

    name: str
    table: str
    bucket: str
    amount: str = "0"
    where: str = "TRUE"


REVENUE_STATUSES = ("completed",)  # revenue counts completed payments only
_REVENUE = "r.status IN ({})".format(", ".join(f"'{status}'" for status in REVENUE_STATUSES))

TALLIED = (
    Tallied("users", "users",
            "r.role || '|' || CASE WHEN r.is_active THEN 'active' ELSE 'inactive' END"),
    Tallied("enrollments", "enrollments", "r.status"),
    Tallied("course_enrollments", "enrollments", "CAST(r.course_id AS TEXT) || '|' || r.status"),
    Tallied("enrolled", "enrollments", "{month:enrolled_at}", where="r.enrolled_at IS NOT NULL"),
    Tallied("completed", "enrollments", "{month:completed_at}",
            where="r.completed_at IS NOT NULL"),
    Tallied("revenue", "payments", "COALESCE({month:paid_at}, '') || '|' || r.currency",
            amount="r.amount", where=_REVENUE),
    Tallied("course_revenue", "payments", "CAST(r.course_id AS TEXT) || '|' || r.currency",
            amount="r.amount", where=_REVENUE),
)
# The columns whose change moves a row from one bucket to another (an UPDATE of any other
# column, such as a heartbeat's progress or a sign-in's last_login, fires nothing).
WATCHED = {
    "users": ("role", "is_active"),
    "enrollments": ("status", "course_id", "enrolled_at", "completed_at"),
    "payments": ("status", "currency", "amount", "paid_at", "course_id"),
}
NAMES = frozenset(tallied.name for tallied in TALLIED)


def _month(dialect: str, column: str) -> str:
    if dialect == "postgresql":
        return f"to_char(timezone('UTC', r.{column}), 'YYYY-MM')"
    return f"strftime('%Y-%m', r.{column})"


def _sql(text: str, dialect: str) -> str:
    while "{month:" in text:
        start = text.index("{month:")
        end = text.index("}", start)
        text = text[:start] + _month(dialect, text[start + 7:end]) + text[end + 1:]
    return text


def _contributions(table: str, source: str, dialect: str, names=None, sign: str = "1") -> str:
    """The (name, bucket, count, amount) rows the rows of `source` (aliased `r`, with a column
    `sign` when `sign` names it) give the figures of `table`."""
    parts = [f"SELECT '{t.name}' AS name, {_sql(t.bucket, dialect)} AS bucket, {sign} AS count, "
             f"({_sql(t.amount, dialect)}) * {sign} AS amount FROM {source} r "
             f"WHERE {_sql(t.where, dialect)}"
             for t in TALLIED if t.table == table and (names is None or t.name in names)]
    return " UNION ALL ".join(parts)


def _summed(rows: str) -> str:
    return (f"SELECT name, bucket, sum(count) AS count, sum(amount) AS amount FROM ({rows}) c "
            "GROUP BY name, bucket")


def _read(rows: str) -> str:
    """(name, bucket, count, amount, and how many rows were added up)."""
    return (f"SELECT name, bucket, sum(count) AS count, sum(amount) AS amount, count(*) AS rows "
            f"FROM ({rows}) c GROUP BY name, bucket")


def computed_sql(dialect: str, names) -> str:
    """The figures `names` summed from the tables: (name, bucket, count, amount, rows)."""
    tables = sorted({t.table for t in TALLIED if t.name in names})
    return _read(" UNION ALL ".join(_contributions(table, table, dialect, names)
                                      for table in tables))


def read_sql(names) -> str:
    """The figures `names` from the tallies: (name, bucket, count, amount, rows), PostgreSQL."""
    listed = ", ".join(f"'{name}'" for name in sorted(names))
    return _read(f"SELECT * FROM {TABLE} WHERE name IN ({listed})")


def recount_sql() -> list[str]:
    """Rebuild every tally from the tables, in one transaction that keeps writers of the three
    tables waiting until it commits (PostgreSQL), and a folding (`compact_sql`) too: one that
    had deleted rows before this DELETE would otherwise put their sum back beside the recount."""
    tables = ", ".join(sorted(WATCHED))
    return [f"LOCK TABLE {tables} IN SHARE MODE", f"LOCK TABLE {TABLE} IN EXCLUSIVE MODE",
            f"DELETE FROM {TABLE}",
            *(f"INSERT INTO {TABLE} (name, bucket, count, amount) "
              + _summed(_contributions(table, table, "postgresql")) for table in sorted(WATCHED))]


# Fold what is there into one row per bucket. Rows appended by transactions that commit
# meanwhile are not in this statement's snapshot and stay; two foldings at once each delete
# (and fold) only the rows the other did not: a row is deleted once.
compact_sql = (f"WITH gone AS (DELETE FROM {TABLE} RETURNING name, bucket, count, amount) "
               f"INSERT INTO {TABLE} (name, bucket, count, amount) "
               "SELECT name, bucket, sum(count), sum(amount) FROM gone GROUP BY name, bucket "
               "HAVING sum(count) <> 0 OR sum(amount) <> 0")


def trigger_ddl() -> list[str]:
    """The functions and triggers that keep the tallies (PostgreSQL), replacing any there."""
    statements = []
    for table, columns in WATCHED.items():
        add = f"INSERT INTO {TABLE} (name, bucket, count, amount) "
        each = f"lms_tally_{table}"
        statements += [
            # INSERT and DELETE: one grouped insert per statement, from its transition table.
            f"CREATE OR REPLACE FUNCTION {each}_rows() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN "
            "IF TG_OP = 'INSERT' THEN "
            f"{add}{_summed(_contributions(table, 'changed', 'postgresql'))}; "
            "ELSE "
            f"{add}{_summed(_contributions(table, 'changed', 'postgresql', sign='-1'))}; "
            "END IF; RETURN NULL; END $$",
            # UPDATE of a watched column: the old row taken away, the new one added.
            f"CREATE OR REPLACE FUNCTION {each}_update() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN {add}"
            + _summed(_contributions(
                table, "(SELECT OLD.*, -1 AS sign UNION ALL SELECT NEW.*, 1 AS sign)",
                "postgresql", sign="r.sign"))
            + " HAVING sum(count) <> 0 OR sum(amount) <> 0; RETURN NULL; END $$",
            # TRUNCATE: the table's figures are empty.
            f"CREATE OR REPLACE FUNCTION {each}_truncate() RETURNS trigger LANGUAGE plpgsql "
            f"AS $$ BEGIN DELETE FROM {TABLE} WHERE name IN ("
            + ", ".join(f"'{t.name}'" for t in TALLIED if t.table == table)
            + "); RETURN NULL; END $$",
            f"DROP TRIGGER IF EXISTS {each}_insert ON {table}",
            f"DROP TRIGGER IF EXISTS {each}_delete ON {table}",
            f"DROP TRIGGER IF EXISTS {each}_update ON {table}",
            f"DROP TRIGGER IF EXISTS {each}_truncate ON {table}",
            f"CREATE TRIGGER {each}_insert AFTER INSERT ON {table} REFERENCING NEW TABLE AS "
            f"changed FOR EACH STATEMENT EXECUTE FUNCTION {each}_rows()",
            f"CREATE TRIGGER {each}_delete AFTER DELETE ON {table} REFERENCING OLD TABLE AS "
            f"changed FOR EACH STATEMENT EXECUTE FUNCTION {each}_rows()",
            f"CREATE TRIGGER {each}_update AFTER UPDATE OF {', '.join(columns)} ON {table} "
            "FOR EACH ROW WHEN ("
            + " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in columns)
            + f") EXECUTE FUNCTION {each}_update()",
            f"CREATE TRIGGER {each}_truncate AFTER TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {each}_truncate()",
        ]
    return statements


def drop_ddl() -> list[str]:
    """Remove the triggers and their functions (PostgreSQL)."""
    statements = []
    for table in WATCHED:
        for kind in ("insert", "delete", "update", "truncate"):
            statements.append(f"DROP TRIGGER IF EXISTS lms_tally_{table}_{kind} ON {table}")
        for kind in ("rows", "update", "truncate"):
            statements.append(f"DROP FUNCTION IF EXISTS lms_tally_{table}_{kind}()")
    return statements
