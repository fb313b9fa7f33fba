"""A short Redis cache and conditional GET for the public catalog.

Guest answers of the public catalog (lists, search, course detail) are kept in Redis for
CATALOG_CACHE_SECONDS with the catalog version number they were computed under; any commit
that wrote a catalog table bumps the version, so a change is visible at once on every host.
The version and the copy are read in the request's one Redis round trip
(utils/pipeline/shared_state.py).
Every cacheable answer gets an ETag and Cache-Control; a matching If-None-Match is 304.
Without Redis, answers are computed every time but still carry ETags. A copy keeps its ETag, and
a guest's request for a current copy is answered before Flask runs, by
utils/pipeline/catalog_fast_path.py (which learns from the views here what it needs).
"""
from __future__ import annotations

import hashlib
import logging
from functools import wraps

import redis
from flask import current_app, g, make_response, request
from sqlalchemy import event
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict

from utils.extensions import COUNTED, limiter
from utils.pipeline import redis_client, shared_state

log = logging.getLogger("lms.cache")

VERSION_KEY = shared_state.CATALOG_VERSION
ENTRY_PREFIX = "lms:catalog:page:"  # + path?sorted query; the value: `entry_value`
REFRESH_PREFIX = "lms:catalog:refresh:"  # + a copy's key: one host renews it (`REFRESH_AHEAD`)
# Refresh ahead: a guest's hit on a copy in the last `refresh_window_ms` of its life claims its
# renewal, once per window across every worker and host (the catalog fast path then computes
# it and answers with the new copy; every other request keeps being served the current one).
# Left to expire, a popular page's copy was missed by every worker at once, each computing it
# (the first time in a worker: 50-70 ms of CPU): the cached search's p99 went to 3-9x its p50.
# Sent as EVAL (Redis keeps it compiled by its digest): no NOSCRIPT after a restart or flush.
REFRESH_AHEAD = ("local left = redis.call('pttl', KEYS[1]) "
                 "if left >= 0 and left < tonumber(ARGV[1]) and "
                 "redis.call('set', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 1 end "
                 "return 0")


def refresh_window_ms(seconds: int) -> int:
    """How long before a copy expires its renewal is claimed: a sixth of its life, at least a
    second."""
    return max(1000, seconds * 1000 // 6)
# In the WSGI environ of a guest's request for a cached view: what the catalog fast path learns
# from it (utils/pipeline/catalog_fast_path.py): endpoint, URL rule, the limits it was counted
# against (Flask-Limiter's RateLimitItem, key arguments, shared).
LEARN = "lms.catalog_view"
# Not users: every login writes the user row, and would empty the cache; an instructor's new
# name or picture shows in cached lists within CATALOG_CACHE_SECONDS.
CATALOG_TABLES = frozenset({"courses", "modules", "lessons", "lesson_resources",
                            "course_prerequisites", "master_categories", "subcategories"})


# A missing version (a new or emptied Redis) starts from the clock, not from 1 (as the shared
# state's sync sets it): a process that kept something under a version seen before Redis lost
# it (a list's count: utils/pagination.py's PageStatement) never sees that number come back.
# A stored value that is not a number INCR takes (`parse_version`), or a key of another type,
# is replaced the same way: INCR refused it, and the version stayed unusable until someone
# fixed it by hand.
_BUMP = ("if redis.call('type', KEYS[1])['ok'] ~= 'string' or "
         f"not {shared_state.IS_STORED_INT}(redis.call('get', KEYS[1])) then "
         "redis.call('set', KEYS[1], ARGV[1]) end "
         "return redis.call('incr', KEYS[1])")
# The catalog version `value` read from Redis as a number; None where it is missing or is not
# one: the catalog then answers as if the version were unknown, from the database, and the
# next catalog write replaces it (`bump`).
parse_version = shared_state.stored_int


def usable_version(value) -> bool:
    """Whether copies may be served and stored under the version `value` read from Redis:
    missing (tagged 0, stale once a write sets one) or a number; never one that is not."""
    return value is None or parse_version(value) is not None


def bump() -> None:
    client = redis_client.get()
    if client is not None:
        try:
            client.eval(_BUMP, 1, VERSION_KEY, shared_state.catalog_version_start())
        except redis.RedisError as exc:
            log.warning("catalog cache version not bumped: %s", exc)


def version() -> int | None:
    """The catalog version this request read in its one Redis round trip (the catalog fast
    path's, or the pipeline's for a catalog view); None when it was not read, or is not set
    (Redis lost it: the shared state's next sync sets it)."""
    seen = g.get("catalog_version", shared_state.NOT_READ)
    if seen is shared_state.NOT_READ:
        seen = shared_state.cached(VERSION_KEY)
    return None if seen is shared_state.NOT_READ else parse_version(seen)


# --- invalidation: any commit that wrote a catalog table --------------------------------------

def _note_flush(session, flush_context, instances) -> None:
    for obj in (*session.new, *session.dirty, *session.deleted):
        if getattr(obj, "__tablename__", None) in CATALOG_TABLES:
            session.info["catalog_changed"] = True
            return


def _note_bulk(state) -> None:
    if (state.is_insert or state.is_update or state.is_delete) and state.is_orm_statement:
        table = getattr(state.statement, "table", None)
        if getattr(table, "name", None) in CATALOG_TABLES:
            state.session.info["catalog_changed"] = True


def _after_commit(session) -> None:
    if session.in_nested_transaction():  # a savepoint released: the real commit is to come
        return
    if session.info.pop("catalog_changed", False):
        bump()


def _after_rollback(session) -> None:
    if not session.in_transaction():
        session.info.pop("catalog_changed", None)


def register() -> None:
    if not event.contains(Session, "after_commit", _after_commit):
        event.listen(Session, "before_flush", _note_flush)
        event.listen(Session, "do_orm_execute", _note_bulk)
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_soft_rollback", lambda s, p: _after_rollback(s))


# --- the decorator ----------------------------------------------------------------------------

def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _conditional(body: bytes, status: int, public: bool, etag: str | None = None):
    etag = etag or etag_of(body)
    if status == 200 and etag in [tag.strip() for tag in
                                  request.headers.get("If-None-Match", "").split(",")]:
        response = make_response("", 304)
    else:
        response = make_response(body, status)
        response.mimetype = "application/json"
    response.headers["ETag"] = etag
    seconds = current_app.config["CATALOG_CACHE_SECONDS"]
    response.headers["Cache-Control"] = (f"public, max-age={seconds}" if public
                                         else "private, no-cache")
    response.headers["Vary"] = "Authorization"
    return response


def entry_key(path: str, args: MultiDict) -> str:
    """A page's copy: its path and its query's parameters in order (the fast path builds the
    same key from the WSGI environ)."""
    query = "&".join(f"{k}={v}" for k, v in sorted(args.items(multi=True)))
    return f"{ENTRY_PREFIX}{path}?{query}"


def entry_value(version, etag: str, body: bytes) -> bytes:
    """A copy as stored: the catalog version it was made under, its ETag, its body (`version`
    missing or a number: see `usable_version`)."""
    return f"{parse_version(version) or 0}\n{etag}\n".encode() + body


def read_entry(value: bytes, version) -> tuple[str, bytes] | None:
    """(etag, body) of a stored copy made under the catalog `version` now current, else None
    (always None under a version that is not a number)."""
    number = parse_version(version)
    if number is None and version is not None:
        return None
    stored, _, rest = value.partition(b"\n")
    if stored != str(number or 0).encode():
        return None
    etag, _, body = rest.partition(b"\n")
    return etag.decode(), body


def prefetch_keys() -> tuple[str, ...]:
    """The keys a request for a cached catalog view reads (in the request's one Redis round
    trip, utils/pipeline/shared_state.py): the catalog version (`version`), and a guest's
    this page's copy while the cache is on."""
    view = current_app.view_functions.get(request.endpoint or "")
    while view is not None and not getattr(view, "catalog_cached", False):
        view = getattr(view, "__wrapped__", None)
    if view is None:
        return ()
    if "Authorization" in request.headers or current_app.config["CATALOG_CACHE_SECONDS"] <= 0:
        return (VERSION_KEY,)
    return VERSION_KEY, entry_key(request.path, request.args)


def guest_read(reader):
    """Mark a `@cached_public` view that the catalog fast path may compute itself for a guest
    whose page no current copy holds (or with the cache off): `reader(None, args,
    **view_args)` returns what the view returns to a guest (`args`: the query model its
    `@validate` declares, parsed from the query string; None without one). Put it directly
    under the route's decorator; the view returns `reader(...)` itself."""

    def decorator(view):
        view.guest_reader = reader
        return view

    return decorator


def cached_public(view):
    """Cache a public catalog view's guest answers (the decorated view must not depend on
    anything but its path and query string when the caller is a guest). A copy is stored with
    the catalog version it was computed under, and served only while that is still the
    version: any catalog write makes every copy stale at once, on every host."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        guest = "Authorization" not in request.headers
        key = entry_key(request.path, request.args) if guest else None
        # Not prefetched: no Redis or Redis down. Not kept: a signed-in caller, the cache off.
        version = shared_state.cached(VERSION_KEY)
        usable = (guest and version is not shared_state.NOT_READ and usable_version(version)
                  and current_app.config["CATALOG_CACHE_SECONDS"] > 0)
        if guest and not request.environ.get(COUNTED):  # counted by the fast path: no limits seen
            request.environ[LEARN] = (request.endpoint, request.url_rule.rule, [
                (limit.limit, limit.request_args, limit.shared)
                for limit in limiter.current_limits])
        if usable:
            entry = shared_state.cached(key)
            copy = read_entry(entry, version) if entry is not None else None
            if copy is not None:
                g.catalog_cache = "hit"
                return _conditional(copy[1], 200, public=True, etag=copy[0])
        response = current_app.make_response(view(*args, **kwargs))
        if response.status_code != 200:
            return response
        body = response.get_data()
        etag = etag_of(body)
        if usable:
            try:
                redis_client.get().set(key, entry_value(version, etag, body),
                                       ex=current_app.config["CATALOG_CACHE_SECONDS"])
            except redis.RedisError as exc:
                log.warning("catalog cache not written: %s", exc)
            g.catalog_cache = "miss"
        return _conditional(body, 200, public=guest, etag=etag)

    wrapper.catalog_cached = True
    return wrapper
