"""A learner's signed-in read answered before Flask runs, with every check the full path makes
for that request, in one Redis round trip and the view's own statements.

The reads a learner's pages make (the dashboard, the enrolled courses, the unread count, ...)
are views behind `@login_required` that read with the caller and nothing else of the request.
Flask spent most of such a request's CPU around the view: its request context, eleven
before/after hooks, Talisman and CORS working out the same headers each time, the
limiter's bookkeeping, the token's three decodes. A view marked `@signed_in_read(reader)`
(`reader(caller, args, **view_args)` returns what the view returns; the view itself calls
the same reader) is answered here instead, when, and only when, this request would pass every
check Flask makes:

- a `GET` under the API prefix with one `Authorization: Bearer <JWT>` header and nothing
  conditional (`If-None-Match`), whose query string (if any) the view's query model accepts as
  Flask's validation would, without a control character in any key or value;
- the token verifies as Flask-JWT-Extended verifies it (its own `decode_token`, with this
  app's memo of verified tokens: signature, expiry, audience, issuer), is an access token,
  and passes the app's custom verification;
- one Redis pipeline: Flask-Limiter's own fixed-window script for each of the endpoint's
  limits (their keys as Flask-Limiter names them), and one MGET of the shared state's trust
  marker, the address's block, the token's revocation and the caller's mirrored access fields
  (shared_state.py, user_mirror.py): every count within its amount, the mirror trusted, the
  address not blocked, the token not revoked, the account there, active, and the token
  issued after its `tokens_valid_after`;
- the view's resolved limits, its answer's headers (security headers, CORS, content type)
  learned from Flask's own 200 to a signed-in caller of the same endpoint, origin and scheme
  in this process, under the rate-limit settings of now.

Anything else (a check that fails, a reader that raises, Redis down, the limiter on its
in-memory fallback, a new endpoint) goes on to Flask, which answers as it always has; the
counts taken here are given back first when a check failed, and stand (`COUNTED`: Flask does
not count them again) when only the reader declined. The reader runs in an app context on a
`@read_only` connection (no transaction block; a write raises), and its answer is shaped by
the view's declared body model exactly as Flask's is (`shape`, given by app.py). The answer is
counted in the metrics and logged as Flask's are. Switched off with SIGNED_IN_FAST_PATH=false.

One write is answered here too: a view marked `@signed_in_write(writer)` (the progress
heartbeat), for a `POST` or `PUT` with a JSON body of at most WRITE_BODY_MAX bytes, no query
string, that the middleware's JSON rules and the view's model accept as Flask's path would
(`parse_body`, given by app.py). Its limits are learned from Flask's own write, whose round
trip counted them; the pipeline here also reads each counter's TTL, so the answer carries the
X-RateLimit-* headers Flask's limiter sends for the limit it names (rate_limits.py). The
writer commits its write itself and must be harmless to repeat; where it declines or raises,
the counts are given back and Flask answers from the body, which is put back in the environ.
"""
from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps

import redis
from flask import g, request
from flask_jwt_extended import decode_token
from flask_jwt_extended.config import config as jwt_config
from flask_jwt_extended.default_callbacks import default_token_verification_callback
from flask_jwt_extended.internal_utils import get_jwt_manager
from flask_jwt_extended.utils import get_unverified_jwt_headers
from werkzeug.exceptions import HTTPException
from werkzeug.http import parse_options_header

from utils.extensions import COUNTED, limiter
from utils.pipeline import redis_client, round_trip, shared_state
from utils.pipeline.catalog_cache import etag_of
from utils.pipeline.fast_reads import (
    FastPath,
    give_back,
    query_arguments,
    refused_by_redis,
    run_reader,
    usable_view_args,
)
from utils.pipeline.user_mirror import GONE, Caller

log = logging.getLogger("lms.fast")

LEARN = "lms.signed_in_read"  # in the environ: the view answered an active, signed-in caller
_BEARER = re.compile(r"Bearer ([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)")


def signed_in_read(reader: Callable):
    """Mark a `@login_required` view that the signed-in fast path may answer with
    `reader(caller, args, **view_args)`: `args` is the query model its `@validate` declares,
    parsed from the query string, or None without one. Put it directly under the route's
    decorator, over the view's other decorators; the view returns
    `reader(current_user(), query_args(), ...)` itself."""
    return _marked("signed_in_reader", reader)


def signed_in_write(writer: Callable):
    """Mark a `@login_required` write view (POST or PUT) that the signed-in fast path may
    answer with `writer(caller, body, **view_args)`: `body` is the model its
    `@validate(json=...)` declares, parsed from a JSON body that is not empty. The writer returns
    the view's 200 answer, or None where the view must write it itself (Flask then answers,
    counted once). Its write must be whole when it returns (committed by the writer) and
    harmless to repeat: should anything after it fail, Flask answers the request again. Put it
    directly under the route's decorators."""
    return _marked("signed_in_writer", writer)


def _marked(attribute: str, function: Callable):
    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            answer = view(*args, **kwargs)
            if g.get("user_id") is not None:
                request.environ[LEARN] = (request.endpoint, request.url_rule.rule)
            return answer

        setattr(wrapper, attribute, function)
        return wrapper

    return decorator


@dataclass
class Endpoint:
    rule: str
    settings: tuple  # the rate-limit settings it was learned under
    limits: tuple  # (RateLimitItem, key arguments with None for the address, cost)
    enabled: bool  # whether the limiter counted at all
    header: int | None = None  # a write's: the limit its X-RateLimit-* headers describe


WRITE_BODY_MAX = 4096  # the longest JSON body a write answered here reads; longer: Flask's


class SignedInFastPath(FastPath):
    """WSGI middleware: see the module's docstring (and fast_reads.FastPath, the frame)."""

    label = "signed-in fast path"
    methods = frozenset({"GET", "POST", "PUT"})
    learn_key = LEARN  # (endpoint, URL rule)

    def takes(self, environ) -> bool:
        return (environ.get("HTTP_AUTHORIZATION", "").startswith("Bearer ")
                and self.app.config["SIGNED_IN_FAST_PATH"])

    # --- when it may answer -----------------------------------------------------------------

    def _match(self, path: str, method: str):
        try:
            rule, view_args = self._url_adapter().match(path, method=method, return_rule=True)
        except HTTPException:
            return None
        name = rule.endpoint
        endpoint = self.endpoints.get((rule.rule, method))
        if endpoint is None or endpoint.settings != round_trip.limit_settings(self.app):
            return None
        if not usable_view_args(view_args):
            return None  # past an Integer column (Flask's 404), or a control character
        return name, endpoint, view_args

    def _answer(self, environ):
        method = environ["REQUEST_METHOD"]
        found = self._match(environ["PATH_INFO"], method)
        if found is None:
            return None
        name, endpoint, view_args = found
        template_key = (endpoint.rule, method, environ.get("HTTP_ORIGIN"),
                        environ.get("wsgi.url_scheme"))
        template = self.templates.used(template_key)
        token = _BEARER.fullmatch(environ["HTTP_AUTHORIZATION"])
        if template is None or token is None or endpoint.enabled != limiter.enabled:
            return None
        view = self.app.view_functions[name]
        write = method != "GET"
        raw = _json_body(environ, self.app.config.get("MAX_CONTENT_LENGTH")) if write else None
        if write and raw is None:
            return None
        storage = None
        if endpoint.limits:
            storage = round_trip.counting_storage(self.app.config.get("REDIS_URL"))
            if storage is None:
                return None
        with self.app.app_context():
            if write:
                arguments = self.parse_body(view.api_json, raw)
            else:
                arguments = query_arguments(environ, getattr(view, "api_query", None),
                                            self.parse_query)
            if arguments is None:
                return None
            claims = _verified(token.group(1))
            if claims is None:
                return None
            ip = environ.get("REMOTE_ADDR") or "unknown"
            keys = [storage.prefixed_key(item.key_for(round_trip.RATE_LIMIT_KEY_PREFIX,
                                                      *(ip if arg is None else arg
                                                        for arg in args)))
                    for item, args, _cost in endpoint.limits]
            catalog = getattr(view, "catalog_cached", False)
            checked = self._checked(claims, endpoint, keys, ip, windows=write, catalog=catalog)
            if checked is None:
                return None
            caller, windows, version = checked
            if catalog:  # catalog_cache.version(): what a catalog view's reader may trust
                g.catalog_version = version
            if write:
                return self._write(view, name, endpoint, template, caller, arguments,
                                   view_args, keys, windows)
            if keys:
                environ[COUNTED] = True  # counted with room: if Flask answers, it counts nothing
            try:
                body = run_reader(view, view.signed_in_reader, caller, arguments, view_args,
                                  self.shape)
            except Exception as exc:  # a 404 of another user's object, say: Flask answers it
                log.debug("signed-in fast path: %s declined (%r); Flask answers", name, exc)
                return None
        if getattr(view, "catalog_cached", False):  # a signed-in copy's tag, as Flask sends it
            template = [*template, ("ETag", etag_of(body))]
        return endpoint.rule, template, body, caller.id

    def _write(self, view, name: str, endpoint: Endpoint, template: list, caller, body,
               view_args: dict, keys: list[str], windows: list):
        """A marked write's answer from its writer, with the X-RateLimit-* headers Flask's
        limiter would send (rate_limits.headers_on_writes) from this request's counts. Where
        the writer declines or raises, the counts are given back and Flask answers (and
        counts) as it always has."""
        try:
            payload = view.signed_in_writer(caller, body, **view_args)
            answer = None if payload is None else self.shape(view, payload)
        except Exception as exc:  # a 404 of another user's enrollment, say
            log.debug("signed-in fast path: %s declined (%r); Flask answers", name, exc)
            answer = None
        if answer is None:
            if keys:
                give_back(redis_client.for_url(self.app.config["REDIS_URL"]), keys)
            return None
        headers = list(template)
        if endpoint.header is not None:
            item = endpoint.limits[endpoint.header][0]
            count, ends = windows[endpoint.header]
            headers += [("X-RateLimit-Limit", str(item.amount)),
                        ("X-RateLimit-Remaining", str(max(0, item.amount - count))),
                        ("X-RateLimit-Reset", str(int(ends + 1)))]
        return endpoint.rule, headers, answer, caller.id

    def _checked(self, claims: dict, endpoint: Endpoint, keys: list[str], ip: str,
                 windows: bool = False, catalog: bool = False):
        """(the caller, each count's (count, window end) when `windows`, else None, the
        catalog version as stored when `catalog`, else None) when every count has room and
        the shared state lets this token in (Flask's checks: auth._token_refused, _load_user,
        _require_active_user, blocked_ips.refuse_blocked_ip); else None, with the counts
        given back. The catalog version rides in the same MGET, as a catalog view's does on
        Flask's path (catalog_cache.prefetch_keys)."""
        jti, subject = claims.get("jti"), claims.get(jwt_config.identity_claim_key)
        if not isinstance(jti, str) or not isinstance(subject, str) or not subject.isdigit():
            return None
        user_id = int(subject)
        client = redis_client.for_url(self.app.config["REDIS_URL"])
        commands = []
        for (item, _args, cost), key in zip(endpoint.limits, keys):
            commands.append(("EVALSHA", round_trip.INCR_EXPIRE_SHA, 1, key, item.get_expiry(),
                             cost))
            if windows:  # a write's headers say what is left, and when
                commands.append(("TTL", key))
        commands.append(("MGET", shared_state.SYNCED, shared_state.ip_key(ip),
                         shared_state.jti_key(jti), shared_state.user_key(user_id),
                         *((shared_state.CATALOG_VERSION,) if catalog else ())))
        try:
            *counted, shared = redis_client.one_trip(client, commands)
        except redis.RedisError as exc:
            log.warning("signed-in fast path: Redis unavailable, Flask answers: %s", exc)
            return None
        counts, ttls = (counted[::2], counted[1::2]) if windows else (counted, [])
        if refused_by_redis(client, keys, counts, *ttls, shared):
            return None  # NOSCRIPT among them: Flask's limiter loads the script again
        generation, blocked, revoked, mirrored, *version = shared
        now = time.time()
        caller = None
        if generation is not None and blocked is None and revoked is None and \
                mirrored is not None and mirrored.startswith(generation + b"|") and \
                not any(int(count) > item.amount
                        for (item, _args, _cost), count in zip(endpoint.limits, counts)):
            rest = mirrored[len(generation) + 1:]
            caller = None if rest == GONE else Caller.decode(user_id, rest)
        if caller is not None and caller.is_active:
            valid_after = caller.tokens_valid_after_ms
            issued_ms = claims.get("iat_ms", claims.get("iat", 0) * 1000)
            if valid_after is None or issued_ms >= valid_after:
                return caller, ([(int(count), max(ttl, 0) + now)
                                 for count, ttl in zip(counts, ttls)]
                                if windows else None), (version[0] if version else None)
        give_back(client, keys)  # Flask counts (or not) and answers as it always has
        return None

    # --- learning from the full path ----------------------------------------------------------

    def _learn(self, environ, marked, headers) -> None:
        """Flask's 200 to an active, signed-in caller of a marked view: the endpoint's headers
        and the limits its round trip decided or, for a write, counted (or none, with the
        limiter off), with the limit a write's X-RateLimit-* headers describe."""
        name, rule = marked
        method = environ.get("REQUEST_METHOD")
        view = self.app.view_functions.get(name)
        marker = "signed_in_reader" if method == "GET" else "signed_in_writer"
        if getattr(view, marker, None) is None:
            return
        settings = round_trip.limit_settings(self.app)
        header = None
        if limiter.enabled:
            decided = environ.get(round_trip.DECIDED)
            if decided is None or decided[0] != settings:
                return  # the limiter decided it (or counted nothing we can repeat): not learned
            limits = decided[1]
            if method != "GET" and limits:
                described = environ.get(round_trip.HEADER_LIMIT)
                header = next((index for index, (item, args, _cost) in enumerate(limits)
                               if described is not None and item == described[0]
                               and args[1] == described[1]), None)
                if header is None:
                    return  # headers the fast path could not say: not learned
        else:
            limits = ()
        self.endpoints[(rule, method)] = Endpoint(rule, settings, limits, limiter.enabled, header)
        key = (rule, method, environ.get("HTTP_ORIGIN"), environ.get("wsgi.url_scheme"))
        self.templates.learn(key, headers)


def _json_body(environ, most: int | None) -> bytes | None:
    """A write's JSON body, read whole, when Flask would read it as this path does: a JSON
    content type, a length given (no chunked transfer), not empty, at most WRITE_BODY_MAX bytes
    (and MAX_CONTENT_LENGTH), no query string; else None. The stream is put back for Flask."""
    if environ.get("QUERY_STRING") or "HTTP_TRANSFER_ENCODING" in environ:
        return None
    mimetype = parse_options_header(environ.get("CONTENT_TYPE", ""))[0].lower()
    if mimetype != "application/json" and not (
            mimetype.startswith("application/") and mimetype.endswith("+json")):
        return None
    length = environ.get("CONTENT_LENGTH", "")
    if not length.isdigit() or not 0 < int(length) <= min(WRITE_BODY_MAX, most or WRITE_BODY_MAX):
        return None
    raw = environ["wsgi.input"].read(int(length))
    environ["wsgi.input"] = io.BytesIO(raw)  # Flask reads it again, if it answers
    return raw if len(raw) == int(length) else None


def _verified(encoded: str) -> dict | None:
    """The token's claims when Flask-JWT-Extended would accept it as this request's access
    token (verify_jwt_in_request: headers only, the type, the custom verification); else
    None."""
    if list(jwt_config.token_location) != ["headers"] or jwt_config.header_name != \
            "Authorization" or jwt_config.header_type != "Bearer":
        return None
    try:
        claims = decode_token(encoded)
        if claims.get("type") != "access":
            return None
        verify = get_jwt_manager()._token_verification_callback
        # The default passes every token: PyJWT's header parse (~30 µs) only for another.
        if verify is not default_token_verification_callback and \
                not verify(get_unverified_jwt_headers(encoded), claims):
            return None
    except Exception:  # expired, invalid, tampered: Flask says which
        return None
    return claims
