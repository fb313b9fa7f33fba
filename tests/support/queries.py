"""Counting the SQL statements a piece of code sends to the database, for query-count guards
(a list must cost the same number of statements whatever its length)."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event

from models import db


@contextmanager
def recorded_statements(app) -> Iterator[list[str]]:
    """The statements sent on the app's engine while the block runs, in order. Push no app
    context around the block: a request made inside it pushes its own."""
    with app.app_context():
        engine = db.engine
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)



@contextmanager
def sent_queries(app) -> Iterator[list[str]]:
    """What psycopg2 actually sent for each statement while the block runs (its cursor's
    `query`: an `EXECUTE` where the statement ran prepared)."""
    with app.app_context():
        engine = db.engine
    sent: list[str] = []

    def record(_connection, cursor, *_args):
        query = getattr(cursor, "query", None)
        if query is not None:
            sent.append(query.decode())

    event.listen(engine, "after_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "after_cursor_execute", record)

def extra_statements(few: list[str], many: list[str]) -> str:
    """What `many` ran more often than `few`, most repeated first: the N+1 to look for."""
    extra = Counter(many) - Counter(few)
    missing = Counter(few) - Counter(many)
    lines = [f"  +{n} x {' '.join(s.split())[:300]}" for s, n in extra.most_common()]
    lines += [f"  -{n} x {' '.join(s.split())[:300]}" for s, n in missing.most_common()]
    return "\n".join(lines) or "  (the same statements)"
