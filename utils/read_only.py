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

Such a connection also runs its SELECTs as server-side prepared statements
(DATABASE_PREPARED_STATEMENTS, on by default): psycopg2 sends every statement as text, and
PostgreSQL planned the learner's list of enrolled courses in 0.95 ms to run it in 0.4 ms, each
time. Each statement is prepared once per connection (`PREPARE`, then `EXECUTE` with the same
parameters; PostgreSQL keeps a generic plan once it costs no more than planning anew), up to
PREPARED_KEPT statements a connection. Event listeners still see the statement itself: the
swap happens where the dialect executes (`do_execute`). A statement PostgreSQL cannot prepare
is sent as it is from then on; one the server lost or whose plan no longer fits its tables is
prepared again. Turn it off behind a pooler in transaction mode (config.py).

A write that is a single statement needs no block either: `statement_commits_alone` lends a
pooled connection of its own in autocommit mode, where that statement is its own transaction
(atomic as any statement is) and, marked with the execution option `PREPARE`, runs prepared as
the reads do. The progress heartbeat is such a write (services/enrollment_service.py).
"""
from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from functools import lru_cache, wraps

from flask import g, has_app_context
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


@lru_cache(maxsize=1024)
def is_read(statement: str) -> bool:
    """Whether `statement` only reads and takes no lock. Kept per statement text: the guard
    runs on every statement of a read-only view, its patterns scan the whole text (~30 µs for
    a course outline's), and the texts are SQLAlchemy's compiled ones, a few hundred at most."""
    found = _READ.match(statement)
    if found is None or _LOCKS_OR_SIDE_EFFECTS.search(statement):
        return False
    return found.group(1).upper() != "WITH" or _WRITE_IN_WITH.search(statement) is None


def _switch(dbapi_connection, on: bool) -> None:
    if dbapi_connection is not None and dbapi_connection.autocommit != on:
        dbapi_connection.autocommit = on  # psycopg2: a client-side setting, no statement


_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
PREPARED = "lms_prepared"  # in a pooled connection's `info`: {statement: its name, or None}
PREPARED_KEPT = 100  # per connection; past it, statements run as sent
_UNKNOWN_STATEMENT, _PLAN_CHANGED = "26000", "0A000"  # PostgreSQL's SQLSTATEs
PREPARE = "lms_prepare"  # an execution option: prepare this statement on an autocommit connection


def _prepared(connection, cursor, statement: str, parameters):
    """`statement` as `EXECUTE` of a server-side prepared statement on this connection,
    preparing it on first use; None where it cannot be (see the module's docstring). A
    connection keeps, per statement, its name and its `EXECUTE` text."""
    kept = connection.info.setdefault(PREPARED, {})
    found = kept.get(statement, False)
    if found is None:
        return None
    if found is False:
        if len(kept) >= PREPARED_KEPT or not isinstance(parameters, dict) or \
                "%s" in statement:
            return None
        order = list(dict.fromkeys(_PLACEHOLDER.findall(statement)))  # each parameter once
        position = {parameter: index for index, parameter in enumerate(order, 1)}
        body = _PLACEHOLDER.sub(lambda m: f"${position[m.group(1)]}", statement)
        name = "lms_" + hashlib.sha1(statement.encode()).hexdigest()[:20]
        try:
            cursor.execute(f"PREPARE {name} AS {body.replace('%%', '%')}")
        except Exception as exc:
            if getattr(exc, "pgcode", None) is None:  # the connection failed: said as such
                raise
            kept[statement] = None  # a parameter PostgreSQL cannot type: sent as it is
            return None
        arguments = ", ".join(f"%({parameter})s" for parameter in order)
        found = kept[statement] = (name, f"EXECUTE {name}({arguments})" if order
                                   else f"EXECUTE {name}")
    return found[1]


@contextmanager
def statement_commits_alone(engine: Engine):
    """A pooled connection, outside the request's session, on which each statement commits on
    its own (psycopg2's autocommit; other drivers: as they are, the caller commits). For one
    write that is a whole transaction in itself; the switch is undone before the connection goes
    back to the pool (and at the next checkout, should that fail)."""
    with engine.connect() as connection:
        dbapi_connection = connection.connection.dbapi_connection
        psycopg2 = engine.dialect.driver == "psycopg2"
        if psycopg2:
            _switch(dbapi_connection, True)
        try:
            yield connection
        finally:
            if psycopg2:
                try:
                    _switch(dbapi_connection, False)
                except Exception:  # a broken connection: dropped rather than pooled
                    connection.invalidate()


def attach(engine: Engine, prepare: bool = True) -> None:
    """Give `engine`'s pool the read-only switch and its guard (app.py, once per engine), and
    with `prepare` (DATABASE_PREPARED_STATEMENTS) the prepared reads. The switch and the
    prepared reads are psycopg2's; on other drivers (SQLite) only the guard applies."""
    psycopg2 = engine.dialect.driver == "psycopg2"
    prepare = prepare and psycopg2

    def checked_out(dbapi_connection, record, _proxy) -> None:
        # g is the app context's: the signed-in fast path reads in one without a request.
        read_only = bool(has_app_context() and g.get("read_only_view"))
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

    def before_statement(connection, _cursor, statement, _parameters, _context, _many):
        if connection.info.get(FLAG) and not is_read(statement):
            raise ReadOnlyViolation(
                "A view marked @read_only sent a statement that needs a transaction: "
                + " ".join(statement.split())[:80])

    def execute(cursor, statement, parameters, context) -> bool | None:
        """The dialect's execute, for a read on a read-only connection or a statement marked
        `PREPARE` on an autocommit one: as its prepared statement (event listeners, which ran
        before, saw the statement itself)."""
        connection = context.root_connection
        try:
            info = connection.info
        except NotImplementedError:  # the dialect's first connection, before any checkout
            return None
        if info.get(FLAG):
            if statement.lstrip()[:6].upper() != "SELECT":
                return None
        elif not (context.execution_options.get(PREPARE) and cursor.connection.autocommit):
            return None  # inside a block, a failed EXECUTE would abort the transaction
        executed = _prepared(connection, cursor, statement, parameters)
        if executed is None:
            return None
        try:
            cursor.execute(executed, parameters)
        except Exception as exc:
            # The server no longer has it (DISCARD ALL, a pooler), or its plan no longer fits
            # its tables (a migration changed a column): prepared again, once. No transaction
            # is open on this connection, so nothing was aborted.
            code = getattr(exc, "pgcode", None)
            if code not in (_UNKNOWN_STATEMENT, _PLAN_CHANGED):
                raise
            name, _execute = info[PREPARED].pop(statement)
            if code == _PLAN_CHANGED:
                cursor.execute(f"DEALLOCATE {name}")
            executed = _prepared(connection, cursor, statement, parameters)
            cursor.execute(executed or statement, parameters)
        return True

    event.listen(engine, "checkout", checked_out)
    event.listen(engine, "checkin", checked_in)
    event.listen(engine, "before_cursor_execute", before_statement)
    if prepare:
        event.listen(engine, "do_execute", execute)
