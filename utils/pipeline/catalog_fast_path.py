"""A guest's catalog page answered before Flask runs, with every check the full path makes for
that request, in one Redis round trip.

A guest `GET` of a cached public catalog view (utils/pipeline/catalog_cache.py) whose copy is
current needs no view, no database and no token: only its rate limits counted, the shared
state's trust and the address's block read, and the stored body sent with the headers the full
path adds. One whose copy is missing or stale (or any, with the cache off:
CATALOG_CACHE_SECONDS=0) of a view marked `@guest_read(reader)` needs the view's reader and
nothing else of Flask. This WSGI layer (inside `TrustedProxies`, so the client's address is the
one the limits and blocks use) does exactly that:

- one Redis pipeline: Flask-Limiter's own fixed-window script (`limits`' incr/expire, by its
  SHA) for each limit the endpoint has, with the keys Flask-Limiter uses, and one `MGET` of
  the shared state's trust marker, the address's block, the catalog version (which the reader
  may trust: catalog_cache.version) and, with the cache on, the copy; for a marked view, a
  script that claims the copy's renewal when it is in the last sixth of its life (one request
  a window, on every host: catalog_cache.REFRESH_AHEAD), which then computes the page as a
  miss does while every other request is served the copy;
- the answer only when every limit still has room, the mirror is trusted and the address is
  not blocked: the copy when it was made under the current catalog version; else, for a
  marked view whose query string the view's query model accepts as Flask's validation would
  (fast_reads.py), the reader's answer, computed on a read-only connection and shaped as Flask
  shapes it, and with the cache on kept as the page's copy under the version read before it
  ran (as `cached_public` keeps it; a second Redis trip, on a miss only);
- anything else (a breached limit, a block, no trust, a miss of an unmarked view, a reader
  that declines, such as an unpublished course's 404, a query Flask refuses, Redis down, the
  limiter on its in-memory fallback, `If-None-Match`, a token, `HEAD`) goes on to Flask, which
  answers it as it always has; a request counted here with room left is not counted again
  there (`COUNTED` in the environ, a Flask-Limiter request filter: utils/extensions.py); for
  one over its limit, from a blocked address or read while the mirror is not trusted, the
  counts are given back and Flask counts (or not) and answers as it always has;
- the headers are the ones Flask sent to the last guest of the same endpoint, origin and
  scheme (security headers, CORS, caching), learned from that response, with this answer's
  own `ETag`, `Content-Length` and `X-Request-ID`; the endpoint's limits are learned from
  Flask-Limiter the same way. Until an endpoint has been answered by Flask once in a process,
  its requests go to Flask.

It counts the request in the metrics and logs it as the full path does. Switched off with
CATALOG_FAST_PATH=false (and whenever the limiter's headers are sent on every answer,
`RATE_LIMIT_HEADERS=all`, which vary per request).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import redis
from flask import g
from limits.storage import RedisStorage
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request

from utils.extensions import COUNTED
from utils.pipeline import catalog_cache, redis_client, round_trip
from utils.pipeline.fast_reads import (
    FastPath,
    give_back,
    query_arguments,
    refused_by_redis,
    run_reader,
    usable_view_args,
)
from utils.pipeline.shared_state import SYNCED, ip_key

log = logging.getLogger("lms.cache")

@dataclass
class Endpoint:
    rule: str  # the URL rule, the metrics' label
    # The rate-limit settings it was learned under: a limit read from config when a request
    # arrives (rate_limits.config_limit) may change at run time, and is then learned again.
    settings: tuple
    # Each limit: the RateLimitItem and Flask-Limiter's key arguments with None for the address.
    limits: list[tuple] = field(default_factory=list)


class CatalogFastPath(FastPath):
    """WSGI middleware: see the module's docstring (and fast_reads.FastPath, the frame)."""

    label = "catalog fast path"
    learn_key = catalog_cache.LEARN  # (endpoint, URL rule, the limits it was counted against)

    # --- when it may answer -----------------------------------------------------------------

    def takes(self, environ) -> bool:
        """A guest's request, with the fast path on and the limiter's headers not on every
        answer (they vary per request)."""
        config = self.app.config
        return ("HTTP_AUTHORIZATION" not in environ and config["CATALOG_FAST_PATH"]
                and config["RATE_LIMIT_HEADERS"] != "all" and bool(config.get("REDIS_URL")))

    def _endpoint(self, path: str) -> tuple[str, Endpoint, dict] | None:
        try:
            name, view_args = self._url_adapter().match(path, method="GET")
        except HTTPException:  # not found, method not allowed, redirect: Flask answers it
            return None
        known = self.endpoints.get(name)
        if known is None or known.settings != self._settings():
            return None
        return name, known, view_args

    def _settings(self) -> tuple:
        """The app's rate-limit settings (RATE_LIMIT_*, RATELIMIT_*), as they are now."""
        return round_trip.limit_settings(self.app)

    def _storage(self):
        """The limiter's storage when the fast path can count as Flask-Limiter does."""
        return round_trip.counting_storage(self.app.config["REDIS_URL"])

    def _answer(self, environ):
        found = self._endpoint(environ["PATH_INFO"])
        if found is None:
            return None
        name, endpoint, view_args = found
        template_key = (name, environ.get("HTTP_ORIGIN"), environ.get("wsgi.url_scheme"))
        template = self.templates.used(template_key)
        if template is None:
            return None
        seconds = self.app.config["CATALOG_CACHE_SECONDS"]
        view = self.app.view_functions[name]
        reader = getattr(view, "guest_reader", None) if self.shape is not None else None
        arguments = None
        if seconds <= 0:  # no copy to serve: only what the reader computes
            if reader is None:
                return None
            arguments = self._arguments(environ, view, view_args)
            if arguments is None:
                return None  # a query or an id Flask refuses (and counts, or not)
        client = redis_client.for_url(self.app.config["REDIS_URL"])
        storage = self._storage() if endpoint.limits else None
        if endpoint.limits and storage is None:
            return None
        ip = environ.get("REMOTE_ADDR") or "unknown"
        keys = _limit_keys(storage, endpoint, ip)
        commands = [("EVALSHA", round_trip.INCR_EXPIRE_SHA, 1, key, item.get_expiry(), 1)
                    for (item, _), key in zip(endpoint.limits, keys)]
        entry = (_entry_key(environ["PATH_INFO"], environ.get("QUERY_STRING", ""))
                 if seconds > 0 else None)
        commands.append(("MGET", SYNCED, ip_key(ip), catalog_cache.VERSION_KEY,
                         *([entry] if entry else [])))
        renews = entry is not None and reader is not None
        if renews:  # claims the copy's renewal when it is about to expire (catalog_cache)
            commands.append(("EVAL", catalog_cache.REFRESH_AHEAD, 2, entry,
                             catalog_cache.REFRESH_PREFIX + entry,
                             catalog_cache.refresh_window_ms(seconds)))
        try:
            replies = redis_client.one_trip(client, commands)
        except redis.RedisError as exc:
            log.warning("catalog fast path: Redis unavailable, Flask answers: %s", exc)
            return None
        renew = replies.pop() if renews else 0  # an error reply: no renewal, as if not due
        *counts, shared = replies
        if refused_by_redis(client, keys, counts, shared):
            if any(isinstance(reply, redis.exceptions.NoScriptError) for reply in counts):
                try:  # a Redis that lost its scripts: load it for the next request
                    client.script_load(RedisStorage.SCRIPT_INCR_EXPIRE)
                except redis.RedisError:
                    pass
            return None
        synced, blocked, version, *cached = shared
        over = any(int(count) > item.amount
                   for (item, _), count in zip(endpoint.limits, counts))
        if over or synced is None or blocked is not None:
            # Flask decides these as it always has (a 429; a 403 for a blocked address, which
            # is refused before its view's limits count it; the mirror brought back in sync),
            # counting what it counts itself: the counts taken here are given back first (a
            # second trip, on refusals only).
            give_back(client, keys)
            return None
        if keys:
            environ[COUNTED] = True  # counted, with room: if Flask answers, it counts nothing
        value = cached[0] if cached else None
        copy = catalog_cache.read_entry(value, version) if value is not None else None
        if copy is None or renew == 1:  # a miss, or this request renews the copy
            if reader is None:
                return None
            if arguments is None:  # read only now: a copy answers most requests
                arguments = self._arguments(environ, view, view_args)
            computed = None if arguments is None else self._computed(
                client, view, reader, arguments, view_args, entry, version, seconds)
            copy = computed or copy  # a renewal the reader declines: the current copy
            if copy is None:
                return None  # counted: Flask refuses it, or answers what the reader declined
        etag, body = copy
        return endpoint.rule, [*template, ("ETag", etag)], body, None

    def _arguments(self, environ, view, view_args: dict):
        """The reader's `args` (fast_reads.query_arguments), or None where Flask refuses the
        request: its query, or an id past the column."""
        if not usable_view_args(view_args):
            return None
        return query_arguments(environ, getattr(view, "api_query", None), self.parse_query)

    def _computed(self, client, view, reader, arguments, view_args, entry, version,
                  seconds) -> tuple[str, bytes] | None:
        """(etag, body) of a guest's answer no current copy holds, from the view's reader, as
        the view would answer it (catalog_cache.cached_public), and kept as its copy when the
        cache is on, under the catalog version read before reading (a write that lands in
        between bumps the version: the copy is never served). None where the reader
        declines (an unpublished course's 404): Flask answers."""
        with self.app.app_context():
            g.catalog_version = version  # catalog_cache.version(): what the reader may trust
            try:
                body = run_reader(view, reader, None, arguments, view_args, self.shape)
            except Exception as exc:
                log.debug("catalog fast path: %s declined (%r); Flask answers",
                          view.__name__, exc)
                return None
        etag = catalog_cache.etag_of(body)
        if entry is not None and catalog_cache.usable_version(version):
            try:
                client.set(entry, catalog_cache.entry_value(version, etag, body), ex=seconds)
            except redis.RedisError as exc:
                log.warning("catalog cache not written: %s", exc)
        return etag, body

    # --- learning from the full path ----------------------------------------------------------

    def _learn(self, environ, learned, headers) -> None:
        """A guest's 200 from a cached view: the endpoint's headers and limits (set in the
        environ by the view: catalog_cache.cached_public)."""
        name, rule, limits = learned
        ip = environ.get("REMOTE_ADDR") or "unknown"
        kept = []
        for item, args, shared in limits:
            if shared or list(args).count(ip) != 1:
                return  # a limit not keyed by the address alone: Flask counts it
            kept.append((item, tuple(None if arg == ip else arg for arg in args)))
        self.endpoints[name] = Endpoint(rule, self._settings(), kept)
        key = (name, environ.get("HTTP_ORIGIN"), environ.get("wsgi.url_scheme"))
        self.templates.learn(key, headers)


@functools.lru_cache(maxsize=1024)
def _entry_key(path: str, query: str) -> str:
    """The copy's key of a page (catalog_cache.entry_key, from the query string as Flask reads
    it), remembered per path and query string: a hit builds no Request."""
    return catalog_cache.entry_key(path, Request({"QUERY_STRING": query}).args)


def _limit_keys(storage, endpoint: Endpoint, ip: str) -> list[str]:
    """The storage keys of the endpoint's limits for the address `ip`, as Flask-Limiter names
    them (none without a storage to count in)."""
    if storage is None:
        return []
    return [storage.prefixed_key(item.key_for(*(ip if arg is None else arg for arg in args)))
            for item, args in endpoint.limits]

