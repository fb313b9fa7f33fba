"""Faults injected at the database edge, never by mocking our own code: temporary PL/pgSQL
triggers that RAISE on the Nth INSERT or UPDATE of a table, at once (BEFORE ... FOR EACH ROW)
or at COMMIT (a deferred constraint trigger: the operation did everything and the commit itself
fails). A sequence counts the rows, so the count survives the rollback the fault causes.
PostgreSQL only."""
from __future__ import annotations

import uuid

from models import db


class Faults:
    """Temporary triggers that raise on the Nth row an operation writes to a table."""

    def __init__(self, app):
        self.app = app
        self.installed: list[tuple[str, str]] = []  # (name, table)

    def _ddl(self, *statements: str) -> None:
        with self.app.app_context(), db.engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
            for statement in statements:
                conn.exec_driver_sql(statement)

    def inject(self, table: str, operation: str, nth: int = 1, *, at_commit: bool = False) -> str:
        """Raise on the `nth` `operation` (INSERT / UPDATE) row of `table`: at once, or, with
        at_commit, when the transaction commits (a deferred constraint trigger)."""
        name = f"lms_fault_{uuid.uuid4().hex[:10]}"
        when = (f"CREATE CONSTRAINT TRIGGER {name} AFTER {operation} ON {table} "
                "DEFERRABLE INITIALLY DEFERRED" if at_commit
                else f"CREATE TRIGGER {name} BEFORE {operation} ON {table}")
        self._ddl(
            f"CREATE SEQUENCE {name}_seq",
            f"""CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fault$
                BEGIN
                  IF nextval('{name}_seq') = {int(nth)} THEN
                    RAISE EXCEPTION USING MESSAGE =
                      'injected fault: ' || TG_OP || ' on ' || TG_TABLE_NAME;
                  END IF;
                  RETURN NEW;
                END
                $fault$""",
            f"{when} FOR EACH ROW EXECUTE FUNCTION {name}()")
        self.installed.append((name, table))
        return name

    def clear(self) -> None:
        while self.installed:
            name, table = self.installed.pop()
            self._ddl(f"DROP TRIGGER IF EXISTS {name} ON {table}",
                      f"DROP FUNCTION IF EXISTS {name}()",
                      f"DROP SEQUENCE IF EXISTS {name}_seq")
