"""Read-only views answered without a transaction block.

psycopg2 opens a transaction with a `BEGIN` of its own before a request's first statement, and
the session ends it with a `ROLLBACK` when the request ends: for a view that reads with one
statement, two of its three round trips to PostgreSQL. Under load those two waited about as
long as the statement itself (py-spy on a gunicorn worker: the unread count spent 11% of its
time in the `ROLLBACK` alone). A view marked `@read_only` gets its pooled connection in
psycopg2's autocommit mode (a client-side switch, no statement): each SELECT runs in its own
implicit transaction, which under READ COMMITTED sees what a statement inside a block would
have seen (PostgreSQL takes a snapshot per statement either way).

What a block would add is atomicity of writes and row locks, so a connection handed out this
way refuses both: any statement other than a plain read (`SELECT`, `EXPLAIN`, or `WITH`
without a write) and any locking read (`FOR UPDATE` / `FOR SHARE`) raises `ReadOnlyViolation`
before it is sent, on every database (the SQLite suite runs the same check). The switch lasts
until the connection goes back to the pool, where autocommit is turned off again. A connection
the request took before the view ran (a hook that read first) stays in its block: the view
works as before, without the saving.
"""
from __future__ import annotations

import re
from functools import wraps

from flask import g, has_request_context
from sqlalchemy import event
from sqlalchemy.engine import Engine

FLAG = "lms_read_only"  # in a pooled connection's `info` while it serves a read-only view
_READ = re.compile(r"\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*(SELECT|EXPLAIN|WITH)\b", re.I | re.S)
_WRITE_IN_WITH = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE)\b", re.I)
_LOCKS_OR_SIDE_EFFECTS = re.compile(
    r"\bFOR\s+(?:NO\s+KEY\s+UPDATE|UPDATE|KEY\s+SHARE|SHARE)\b|\bnextval\s*\(|\bsetval\s*\("
    r"|\bpg_advisory|\bset_config\s*\(", re.I)


class ReadOnlyViolation(RuntimeError):
    """A statement that needs a transaction block ran in a view marked `@read_only`."""


def read_only(view):
    """Mark a view that only reads: its database connection, if it takes one, runs without a
    transaction block (see the module's docstring)."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        g.read_only_view = True
        try:
            return view(*args, **kwargs)
        finally:
            g.read_only_view = False

    return wrapper


def is_read(statement: str) -> bool:
    """Whether `statement` only reads and takes no lock."""
    found = _READ.match(statement)
    if found is None or _LOCKS_OR_SIDE_EFFECTS.search(statement):
        return False
    return found.group(1).upper() != "WITH" or _WRITE_IN_WITH.search(statement) is None


def _switch(dbapi_connection, on: bool) -> None:
    if dbapi_connection is not None and dbapi_connection.autocommit != on:
        dbapi_connection.autocommit = on  # psycopg2: a client-side setting, no statement


def _before_statement(connection, _cursor, statement, _parameters, _context, _many) -> None:
    if connection.info.get(FLAG) and not is_read(statement):
        raise ReadOnlyViolation(
            "A view marked @read_only sent a statement that needs a transaction: "
            + " ".join(statement.split())[:80])


def attach(engine: Engine) -> None:
    """Give `engine`'s pool the read-only switch and its guard (app.py, once per engine). The
    switch is psycopg2's; on other drivers (SQLite) only the guard applies."""
    psycopg2 = engine.dialect.driver == "psycopg2"

    def checked_out(dbapi_connection, record, _proxy) -> None:
        read_only = bool(has_request_context() and g.get("read_only_view"))
        if read_only:
            record.info[FLAG] = True
        else:
            record.info.pop(FLAG, None)
        if psycopg2:  # also undoes a switch a failed checkin could not
            _switch(dbapi_connection, read_only)

    def checked_in(dbapi_connection, record) -> None:
        if record is None or not record.info.pop(FLAG, False) or not psycopg2:
            return
        try:
            _switch(dbapi_connection, False)
        except Exception:  # a broken connection: the next checkout switches it, or drops it
            pass

    event.listen(engine, "checkout", checked_out)
    event.listen(engine, "checkin", checked_in)
    event.listen(engine, "before_cursor_execute", _before_statement)
