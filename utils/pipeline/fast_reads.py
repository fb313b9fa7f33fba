"""What both fast paths (signed_in_fast_path.py, catalog_fast_path.py) need to answer a read
themselves, before Flask runs: the query string read as Flask's validation reads it, and the
view's reader run on a read-only connection, its answer shaped as Flask shapes it.

A reader is `reader(caller, args, **view_args)`: the caller (None for a guest), the view's
query model parsed from the query string (None for a view without one) and the URL's
arguments; it returns what the view returns, and the view itself calls the same reader.
"""
from __future__ import annotations

from collections.abc import Callable

from flask import g
from werkzeug.wrappers import Request

from models import db
from utils.validators import INT_MAX, text_problem


def usable_view_args(view_args: dict) -> bool:
    """Whether the URL's arguments can reach the database as Flask would send them: an id past
    an Integer column is Flask's 404 (the database would refuse the statement), a control
    character is the middleware's 422."""
    return not any(value > INT_MAX if isinstance(value, int) else not str(value).isprintable()
                   for value in view_args.values())


def query_arguments(environ, query, parse_query: Callable):
    """The view's query model from the query string (its defaults without one); False for
    a view without a model; None where Flask would refuse the query (a control character
    in any key or value: the middleware's 422; a value the model refuses: 422).
    `parse_query(model, args)` is validation.parsed_query (given by app.py)."""
    if not environ.get("QUERY_STRING"):
        if query is None:
            return False
        try:
            return query()
        except ValueError:  # pydantic's ValidationError: a parameter the model requires
            return None
    args = Request(environ).args
    if any(text_problem(key, single_line=True) or text_problem(value, single_line=True)
           for key, value in args.items(multi=True)):
        return None
    if query is None:
        return False  # Flask ignores a query its view does not read
    return parse_query(query, args)


def run_reader(view, reader: Callable, caller, arguments, view_args: dict,
               shape: Callable) -> bytes:
    """The view's answer body from its reader, as Flask would send it (`shape(view, payload)`:
    validation.answer_body). Runs in the app context the caller pushed (its teardown closes
    the connection), on a `@read_only` connection: no transaction block, and a write raises.
    Whatever the reader raises (a 404, say) is the caller's to hand to Flask."""
    g.read_only_view = True
    if not db.session.registry.has():  # (nothing before has asked for one)
        db.session.registry.set(ReadSession(db.session.session_factory, db.engine))
    try:
        payload = reader(caller, arguments if arguments is not False else None, **view_args)
        return shape(view, payload)
    finally:
        g.read_only_view = False


class ReadSession:
    """`db.session` while a reader runs (the app context's teardown closes it): its
    `connection()` is one engine connection, checked out in read-only mode as a `@read_only`
    view's is, without the ORM session's transaction bookkeeping around it (0.317 → 0.235 ms
    of CPU for a one-statement read, paired rounds in process). Anything else asked of it (an
    ORM `get`, a query, a connection with options) goes to a real session, made on first
    use."""

    def __init__(self, factory, engine) -> None:
        self._factory, self._engine = factory, engine
        self._connection = self._session = None

    def connection(self, bind_arguments=None, execution_options=None):
        if bind_arguments or execution_options:
            return self._real().connection(bind_arguments, execution_options)
        if self._connection is None:
            self._connection = self._engine.connect()
        return self._connection

    def _real(self):
        if self._session is None:
            self._session = self._factory()
        return self._session

    def __getattr__(self, name: str):
        return getattr(self._real(), name)

    def close(self) -> None:
        try:
            if self._connection is not None:
                self._connection.close()
        finally:
            if self._session is not None:
                self._session.close()
