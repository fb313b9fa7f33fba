"""What both fast paths (signed_in_fast_path.py, catalog_fast_path.py) share to answer a read
themselves, before Flask runs: the WSGI frame (`FastPath`: which requests it looks at, the
answer sent with the headers Flask sent last, a failure handed to Flask, learning from Flask's
200), the query string read as Flask's validation reads it, and the view's reader run on a
read-only connection, its answer shaped as Flask shapes it.

A reader is `reader(caller, args, **view_args)`: the caller (None for a guest), the view's
query model parsed from the query string (None for a view without one) and the URL's
arguments; it returns what the view returns, and the view itself calls the same reader.
"""
from __future__ import annotations

import functools
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable

import redis
from flask import Flask, g
from werkzeug.wrappers import Request

from models import db
from utils.pipeline import round_trip
from utils.validators import INT_MAX, REQUEST_ID, text_problem

log = logging.getLogger("lms.fast")

# Headers each answer sets for itself; the rest are the endpoint's, learned.
OWN_HEADERS = frozenset({"content-length", "etag", "x-request-id", "x-ratelimit-limit",
                         "x-ratelimit-remaining", "x-ratelimit-reset"})
TEMPLATES_KEPT = 64  # (endpoint, origin, scheme) header sets per process, least recent dropped


class HeaderTemplates(OrderedDict):
    """The headers Flask sent with an endpoint's last 200, per (endpoint, origin, scheme),
    without the ones each answer sets for itself; the least recently used dropped past
    TEMPLATES_KEPT."""

    def learn(self, key: tuple, headers) -> None:
        self[key] = [(header, value) for header, value in headers
                     if header.lower() not in OWN_HEADERS]
        self.move_to_end(key)
        while len(self) > TEMPLATES_KEPT:
            self.popitem(last=False)

    def used(self, key: tuple) -> list[tuple[str, str]] | None:
        template = self.get(key)
        if template is not None:
            self.move_to_end(key)
        return template


class FastPath:
    """A WSGI layer that answers some requests under `prefix` before Flask (GETs, or the
    `methods` a subclass names). A subclass says which requests it looks at (`takes`), answers
    one (`_answer(environ)`: the URL rule, the
    endpoint's headers, the body and the caller's id, or None to hand it to Flask) and learns
    from Flask's 200 to one its view marked (`_learn(environ, marked, headers)`, where
    `marked` is what the view left in the environ under `learn_key`). Each answer gets its own
    `Content-Length` and `X-Request-ID` (the client's, when it is a usable one) and is counted
    and logged by `on_answer(environ, status, rule, started, request_id, user_id)`. A request
    with `If-None-Match` is Flask's (a 304 is its to decide); so is one the subclass fails on:
    never worse than Flask's answer."""

    label = "fast path"  # in the log
    methods = frozenset({"GET"})  # the requests it looks at
    learn_key = ""  # the environ key a marked view's answer leaves for `_learn`

    def __init__(self, wsgi_app, app: Flask, prefix: str, *, shape: Callable | None = None,
                 parse_query: Callable | None = None, parse_body: Callable | None = None,
                 on_answer: Callable[..., None] | None = None):
        self.wsgi_app = wsgi_app
        self.app = app
        self.prefix = prefix
        self.shape = shape  # validation.answer_body
        self.parse_query = parse_query  # validation.parsed_query
        self.parse_body = parse_body  # validation.parsed_body
        self.on_answer = on_answer
        self.endpoints: dict = {}
        self.templates = HeaderTemplates()
        self._adapter = None

    def takes(self, environ) -> bool:
        raise NotImplementedError

    def _answer(self, environ):
        raise NotImplementedError

    def _learn(self, environ, marked, headers) -> None:
        raise NotImplementedError

    def __call__(self, environ, start_response):
        if (environ.get("REQUEST_METHOD") not in self.methods or "HTTP_IF_NONE_MATCH" in environ
                or not environ.get("PATH_INFO", "").startswith(self.prefix)
                or not self.takes(environ)):
            return self.wsgi_app(environ, start_response)
        started = time.perf_counter()
        try:
            answer = self._answer(environ)
        except Exception:  # never worse than Flask's answer: Flask answers it
            log.exception("%s failed; Flask answers", self.label)
            answer = None
        if answer is None:
            return self._learning(environ, start_response)
        rule, headers, body, user_id = answer
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
        start_response("200 OK", [*headers, ("Content-Length", str(len(body))),
                                  ("X-Request-ID", request_id)])
        if self.on_answer is not None:
            self.on_answer(environ, 200, rule, started, request_id, user_id)
        return [body]

    def _url_adapter(self):
        if self._adapter is None:
            self._adapter = self.app.url_map.bind("localhost")
        return self._adapter

    def _learning(self, environ, start_response):
        """Flask answers; its 200 to a request a marked view answered teaches `_learn` (not
        one that sets a cookie: that answer is someone's own)."""

        def start(status, headers, exc_info=None):
            marked = environ.get(self.learn_key)
            if marked is not None and status.startswith("200 ") and not any(
                    header.lower() == "set-cookie" for header, _ in headers):
                self._learn(environ, marked, headers)
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start)


def give_back(client: redis.Redis, keys: list[str]) -> None:
    """One count taken from each counter (never below zero, never reviving an expired one)."""
    if not keys:
        return
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.eval(round_trip.GIVE_BACK, 1, key, 1)
    try:
        pipe.execute()
    except redis.RedisError as exc:  # the window's expiry ends the extra count anyway
        log.warning("fast path: counts not given back: %s", exc)


def refused_by_redis(client: redis.Redis, keys: list[str], counts: list, *others) -> bool:
    """Whether a reply of a fast path's round trip is an error (NOSCRIPT: a Redis that lost the
    limiter's script); if so, the counts the other scripts made (`counts`, one a key) are given
    back, and Flask answers, counting itself."""
    if not any(isinstance(reply, redis.ResponseError) for reply in (*counts, *others)):
        return False
    give_back(client, [key for key, count in zip(keys, counts)
                       if not isinstance(count, Exception)])
    return True


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
    parsed = _parsed_query(query, environ["QUERY_STRING"], parse_query)
    return parsed.model_copy() if parsed else parsed  # the reader's own, as Flask's would be


@functools.lru_cache(maxsize=512)
def _parsed_query(query, query_string: str, parse_query: Callable):
    """`query_arguments` of a query string, remembered per model and query string: what it
    says depends on nothing else (the models read no clock and no setting), and a page's
    query string repeats (parsing and checking it was ~40 us of a public list's CPU)."""
    args = Request({"QUERY_STRING": query_string}).args
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
