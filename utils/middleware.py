"""Request/response middleware: request ids, structured request logs, refusal of input no
route may see (malformed or too deeply nested JSON, NUL and control characters in path
segments, query values and form fields, ids beyond an Integer column), and the one error
handler that shapes every error the API returns."""
from __future__ import annotations

import json
import logging
import time
import uuid

from flask import Flask, current_app, g, has_request_context, jsonify, request
from flask.sessions import SessionInterface
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

from models import db
from utils.errors import APIError, BadRequest, NotFound, ServiceUnavailable, ValidationError
from utils.extensions import limiter
from utils.validators import (
    INT_MAX,
    REQUEST_ID,
    JsonTooDeep,
    json_has_nul,
    nul_paths,
    one_line,
    read_json_body,
    text_problem,
)

log = logging.getLogger("lms.request")

# Werkzeug's HTTP errors keep their status; these give them our machine codes and messages.
_HTTP_CODES = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "You are not allowed to do this"),
    404: ("not_found", "The requested resource was not found"),
    405: ("method_not_allowed", "Method not allowed for this resource"),
    409: ("conflict", "Conflict"),
    413: ("payload_too_large", "Request body too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    429: ("rate_limited", "Too many requests"),
}


# A database that cannot serve right now answers 503 with this Retry-After (seconds).
DATABASE_RETRY_AFTER = 5
# PostgreSQL SQLSTATEs that mean "not now" rather than "this request is wrong": connection
# exceptions (08), insufficient resources (53: too many connections, disk full), operator
# intervention (57: shutting down, starting up, statement timeout), and a lost serialization
# race, a deadlock or a lock timeout, which a retry can win.
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "57")
_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03"}


def current_request_id() -> str | None:
    return g.get("request_id") if has_request_context() else None


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every log record, so every line can be traced."""

    def filter(self, record: logging.LogRecord) -> bool:
        # A line logged outside a request context (the catalog fast path) brings its own.
        record.request_id = getattr(record, "request_id", None) or current_request_id() or "-"
        return True


class JsonFormatter(logging.Formatter):
    _RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "request_id"}

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,  # which gunicorn worker answered
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        # Fields passed with `extra=` become keys of their own.
        for key, value in vars(record).items():
            if key not in self._RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(app: Flask) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if app.config["LOG_FORMAT"] == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger("lms")
    root.handlers[:] = [handler]
    root.setLevel(app.config["LOG_LEVEL"])
    root.propagate = False


def error_response(status: int, code: str, message: str, details=None, headers=None):
    body = {"error": message, "code": code}
    if details:
        body["details"] = details
    response = jsonify(body)
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _handle_api_error(exc: APIError):
    return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)


def _handle_http_exception(exc: HTTPException):
    if exc.response is not None and exc.code is None:
        return exc.response
    status = exc.code or 500
    code, message = _HTTP_CODES.get(status, ("http_error", exc.name))
    headers = {}
    if status == 405 and getattr(exc, "valid_methods", None):
        headers["Allow"] = ", ".join(exc.valid_methods)
    if status == 429:
        # Flask-Limiter's RateLimitExceeded carries the limit that was hit; the limiter knows
        # when its window resets, which is what a client needs in Retry-After.
        limit = getattr(exc, "description", None)
        if limit:
            message = f"Too many requests: the limit is {limit}"
        current = limiter.current_limit
        if current is not None:
            headers["Retry-After"] = str(max(1, int(current.reset_at - time.time())))
    if status == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        if limit:
            message = f"Request body too large: the limit is {limit} bytes"
    return error_response(status, code, message, headers=headers)


def _rollback_session() -> None:
    """Roll the request's session back; when the connection itself is gone and even that
    fails, invalidate it, so the pool opens a new one for the next request."""
    try:
        db.session.rollback()
    except SQLAlchemyError:
        _invalidate_session()


def _invalidate_session() -> None:
    """Drop the session's connection (the pool opens a new one), whatever state it is in."""
    try:
        db.session().invalidate()
    except SQLAlchemyError:
        pass


def _close_session(_exc) -> None:
    """teardown_appcontext, ahead of Flask-SQLAlchemy's own (registered after it): the
    request's session closed here. A connection the database dropped after the view's last
    statement (a restart, a failover: seen in tests/test_postgres_restart.py) made the close's
    ROLLBACK raise out of the app, and the server sent its own HTML 500 in place of the
    answer the view had made. The connection is invalidated instead (the pool opens a new one)
    and the session dropped: what the view committed was committed before this, and what it
    did not, the server has rolled back with the connection."""
    try:
        db.session.remove()
    except SQLAlchemyError as exc:
        log.warning("session closed on a lost database connection: %s",
                    type(getattr(exc, "orig", None) or exc).__name__)
        _invalidate_session()
        db.session.registry.clear()


def _sqlstate(exc: DBAPIError) -> str | None:
    orig = exc.orig
    return getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)


def database_unavailable(exc: BaseException) -> bool:
    """True when `exc` says the database cannot serve right now (down, restarting, out of
    connections, too slow, a lost lock race), so the client should retry; False for an error
    that retrying would only repeat (a bug, bad SQL, a missing table)."""
    if isinstance(exc, PoolTimeoutError):
        return True  # every pooled connection busy for DATABASE_POOL_TIMEOUT seconds
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True  # the dialect recognised a dropped connection
    sqlstate = _sqlstate(exc)
    if sqlstate:
        return sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES or sqlstate in _TRANSIENT_SQLSTATES
    if not isinstance(exc, OperationalError):
        return False
    module = type(exc.orig).__module__ or ""
    if module.startswith("psycopg"):
        # No SQLSTATE: the client library failed to reach or lost the server (refused,
        # timed out, closed), before the server could say anything.
        return True
    # sqlite3: a locked or busy database file is transient; "no such table" is not.
    name = getattr(exc.orig, "sqlite_errorname", None) or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def _handle_database_error(exc: SQLAlchemyError):
    if not database_unavailable(exc):
        return _handle_unexpected(exc)
    _rollback_session()
    orig = getattr(exc, "orig", None)
    sqlstate = _sqlstate(exc) if isinstance(exc, DBAPIError) else None
    # The driver's message can carry host names, users and SQL: the class and SQLSTATE only.
    log.error("database unavailable on %s %s: %s%s", request.method, request.path,
              type(orig if orig is not None else exc).__name__,
              f" (SQLSTATE {sqlstate})" if sqlstate else "",
              extra={"error_class": type(exc).__name__, "sqlstate": sqlstate})
    return _handle_api_error(ServiceUnavailable(
        "The service is temporarily unavailable; try again shortly",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER)}))


def _handle_integrity_error(exc: IntegrityError):
    _rollback_session()
    log.warning("integrity error: %s", type(exc.orig).__name__)
    return error_response(409, "conflict", "The request conflicts with existing data")


def _handle_unexpected(exc: Exception):
    _rollback_session()
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal_error", "An unexpected error occurred")


def _start_request():
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
    g.request_started = time.perf_counter()


def _reject_malformed_json():
    """A body that claims to be JSON must be JSON (and UTF-8): 400, not a silent `{}`; nor may
    it nest deeper than JSON_MAX_DEPTH (400, checked before parsing: a deep body would
    otherwise exhaust the parser's recursion), nor hold NUL in any string or key (422)."""
    if request.routing_exception is not None:
        return  # an unknown path or method answers 404/405 whatever the body
    if request.method in ("POST", "PUT", "PATCH", "DELETE") and request.is_json:
        raw = request.get_data(cache=True)
        if not raw:
            return
        try:
            document, text = read_json_body(raw)
        except JsonTooDeep as exc:
            raise BadRequest(str(exc), code="json_too_deep")
        except (ValueError, RecursionError):  # UnicodeDecodeError included
            raise BadRequest("Request body is not valid JSON", code="malformed_json")
        if json_has_nul(text):  # in any string or key, read by a model or not
            raise ValidationError("Invalid input", details=nul_paths(document))


def _reject_control_characters():
    """What no model reads is checked here for every route: a path segment with a control
    character (NUL included) names nothing (the view's own 404), nor does an id beyond an
    Integer column (404); a query
    value or a form field with NUL or another control character is 422 (multi-line text
    travels in JSON bodies, where the models allow line breaks in long text)."""
    if request.routing_exception is not None:
        return
    view_args = request.view_args or {}
    for name, value in view_args.items():
        if isinstance(value, int) and not isinstance(value, bool) and value > INT_MAX:
            raise NotFound()
        if isinstance(value, str) and text_problem(value, single_line=True):
            # No identifier holds a control character: each becomes U+FFFD, which matches
            # nothing, so the view answers its own "not found" (in the shape it declares)
            # and no NUL reaches the database.
            view_args[name] = one_line(value, by="\ufffd")
    details = {}
    for key, value in request.args.items(multi=True):
        problem = text_problem(key, single_line=True) or text_problem(value, single_line=True)
        if problem:
            details.setdefault(key, problem)
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        for key, value in request.form.items(multi=True):
            key = key or ""  # a part without a name
            problem = text_problem(key, single_line=True) or \
                (isinstance(value, str) and text_problem(value, single_line=False))
            if problem:
                details.setdefault(key, problem)
    if details:
        raise ValidationError("Invalid input", details=details)


def _finish_request(response):
    request_id = g.get("request_id")
    if request_id:
        response.headers["X-Request-ID"] = request_id
    started = g.get("request_started")
    if started is not None:
        log_request(request.method, request.path, response.status_code, started,
                    request.remote_addr, g.get("user_id"))
    return response


def log_request(method: str, path: str, status: int, started: float, remote_addr: str | None,
                user_id: int | None = None, request_id: str | None = None) -> None:
    """The request log's line for an answer (also written by utils/pipeline/catalog_fast_path.py
    for the answers it sends before Flask runs)."""
    extra = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "remote_addr": remote_addr,
        "user_id": user_id,
    }
    if request_id is not None:
        extra["request_id"] = request_id
    log.info("%s %s %s", method, path, status, extra=extra)


class NoCookieSessions(SessionInterface):
    """The API keeps no state in cookies (callers send a bearer token), so no request opens
    Flask's signed-cookie session: with a SECRET_KEY set, Flask's default builds an
    itsdangerous serializer for every request (-0.05 ms of a signed-in read's ~1.1 ms) to read
    a cookie nobody sets. `flask.session` is Flask's null session: reading it finds nothing,
    writing to it raises."""

    def open_session(self, app, request):
        return None  # Flask then makes its null session

    def save_session(self, app, session, response) -> None:
        return None


def init_middleware(app: Flask) -> None:
    configure_logging(app)
    app.session_interface = NoCookieSessions()
    # Ahead of the limiter's own before_request: a 429 of a default limit carries its
    # X-Request-ID and gets its request log line too (metrics.init_app puts its timer first).
    app.before_request_funcs.setdefault(None, []).insert(0, _start_request)
    app.before_request(_reject_malformed_json)
    app.before_request(_reject_control_characters)
    app.after_request(_finish_request)
    app.teardown_appcontext(_close_session)  # runs before db's own (teardowns run in reverse)
    app.register_error_handler(APIError, _handle_api_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(IntegrityError, _handle_integrity_error)
    app.register_error_handler(SQLAlchemyError, _handle_database_error)
    app.register_error_handler(Exception, _handle_unexpected)
