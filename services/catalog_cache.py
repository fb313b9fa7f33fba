"""A short Redis cache and conditional GET for the public catalog.

Guest answers of the public catalog (lists, search, course detail) are kept in Redis for
CATALOG_CACHE_SECONDS under a key that carries a catalog version number; any commit that
wrote a catalog table bumps the version, so a change is visible at once on every host.
Every cacheable answer gets an ETag and Cache-Control; a matching If-None-Match is 304.
Without Redis, answers are computed every time but still carry ETags.
"""
from __future__ import annotations

import hashlib
import logging
from functools import wraps

import redis
from flask import current_app, g, make_response, request
from sqlalchemy import event
from sqlalchemy.orm import Session

from services import redis_client

log = logging.getLogger("lms.cache")

VERSION_KEY = "lms:catalog:version"
# Not users: every login writes the user row, and would empty the cache; an instructor's new
# name or picture shows in cached lists within CATALOG_CACHE_SECONDS.
CATALOG_TABLES = frozenset({"courses", "modules", "lessons", "lesson_resources",
                            "course_prerequisites", "master_categories", "subcategories"})


def _version(client) -> int:
    return int(client.get(VERSION_KEY) or 0)


def bump() -> None:
    client = redis_client.get()
    if client is not None:
        try:
            client.incr(VERSION_KEY)
        except redis.RedisError as exc:
            log.warning("catalog cache version not bumped: %s", exc)


# --- invalidation: any commit that wrote a catalog table --------------------------------------

def _note_flush(session, flush_context, instances) -> None:
    for obj in (*session.new, *session.dirty, *session.deleted):
        if getattr(obj, "__tablename__", None) in CATALOG_TABLES:
            session.info["catalog_changed"] = True
            return


def _note_bulk(state) -> None:
    if (state.is_update or state.is_delete) and state.is_orm_statement:
        table = getattr(state.statement, "table", None)
        if getattr(table, "name", None) in CATALOG_TABLES:
            state.session.info["catalog_changed"] = True


def _after_commit(session) -> None:
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

def _conditional(body: bytes, status: int, public: bool):
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
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


def cached_public(view):
    """Cache a public catalog view's guest answers (the decorated view must not depend on
    anything but its path and query string when the caller is a guest)."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        guest = "Authorization" not in request.headers
        # CATALOG_CACHE_SECONDS=0 turns the Redis copy off (ETags stay).
        enabled = guest and current_app.config["CATALOG_CACHE_SECONDS"] > 0
        client = redis_client.get() if enabled else None
        key = None
        if client is not None:
            try:
                query = "&".join(f"{k}={v}" for k, v in sorted(request.args.items(multi=True)))
                key = f"lms:catalog:{_version(client)}:{request.path}?{query}"
                hit = client.get(key)
                if hit is not None:
                    g.catalog_cache = "hit"
                    return _conditional(hit, 200, public=True)
            except redis.RedisError as exc:
                log.warning("catalog cache unavailable: %s", exc)
                client = None
        response = current_app.make_response(view(*args, **kwargs))
        if response.status_code != 200:
            return response
        body = response.get_data()
        if client is not None and key is not None:
            try:
                client.set(key, body, ex=current_app.config["CATALOG_CACHE_SECONDS"])
            except redis.RedisError as exc:
                log.warning("catalog cache not written: %s", exc)
        g.catalog_cache = "miss"
        return _conditional(body, 200, public=guest)

    return wrapper
