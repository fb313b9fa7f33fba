"""A request's one Redis round trip: the rate limiter's counters and the shared state's MGET
sent together.

Flask-Limiter (utils/extensions.py, fixed window) counts a limit with one script call to
Redis (limits' incr-and-expire), and the pipeline reads the request's shared state with one
MGET (shared_state.py): sent apart, a rate-limited request waits for Redis twice. Here the
counter scripts the limiter is about to run for this request are pipelined with the MGET; the
limiter's storage (`RoundTripRedisStorage`, the `lms+redis://` scheme config.py gives a Redis
URL) then answers its `incr` for those counters from the reply instead of calling Redis.
Flask-Limiter still decides everything else as before: which limits apply, the 429 and its
Retry-After, the X-RateLimit-* headers, the in-memory fallback and the recovery.

A write answers with X-RateLimit-Remaining and -Reset (rate_limits.headers_on_writes), which
limits reads with a GET and a TTL of the counter: two more round trips. For a write, the
pipeline also asks each counter's TTL, and the storage answers that window's `get` and
`get_expiry` from the reply: the count just made and its window's end, as this request left
them.

Which counters: the ones Flask-Limiter's own resolution (its limit manager, with the inputs it
passes itself) names for this request, keyed as it keys them. When they are counted:
- default (and application) limits are counted in the limiter's before_request, which runs
  before the pipeline's: the trip goes from the limiter's request filter (`_before_limits`),
  which it calls before evaluating any limit;
- a route's decorated limits are counted by the view's decorator, after every before_request
  hook: the trip goes from the pipeline's hook (`read_shared_state`), after the middleware's
  400/422 refusals.
A counter counted here that the limiter does not take (a blocked address's 403 before a
decorated view, a 429 of an earlier limit, an exception) is given back when the request ends,
so the counts end as Flask-Limiter alone leaves them. Nothing is counted ahead while the
limiter counts in memory (Redis failed), nor when the limits and the shared state live on
different Redis servers (RATE_LIMIT_STORAGE_URL not REDIS_URL): then each is sent on its own.

A signed-in read whose every counter has room is decided here. Flask-Limiter counts a fixed
window with `limits`' incr and allows the request when each count is at most its limit's
amount: with every counter it would hit already counted in the trip, by the same script and
keys, and each count within its amount, its answer is known. Its checks are then skipped (the
request filter says so), and the counts stand as its own would have. The limiter still decides
everything else: a count over its amount (the 429, its Retry-After and the on-breach hooks), a
write (its X-RateLimit-* headers come from the limiter's record of the request), a guest
(the catalog fast path learns an endpoint's limits from that record, catalog_cache.py), a
limit that only tests (`deduct_when`) or has meta limits, headers on every answer
(RATE_LIMIT_HEADERS=all), the in-memory fallback, any strategy but the fixed window. A kept
plan is resolved again whenever the app's rate-limit settings change (a limit read from
config, rate_limits.config_limit) or the endpoint gains a hint (a limited callable that is not
its view), so a decided request counts what the limiter would count now.
"""
from __future__ import annotations

import hashlib
import logging
import time
from typing import NamedTuple

import redis
from flask import current_app, g, has_request_context, request
from flask_limiter.util import get_qualified_name
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter

from utils.extensions import RATE_LIMIT_KEY_PREFIX, limiter
from utils.pipeline import catalog_cache, redis_client, shared_state

log = logging.getLogger("lms.limits")

SCHEME = "lms+"
READS = ("GET", "HEAD", "OPTIONS")  # no X-RateLimit-* headers (rate_limits.headers_on_writes)
# In the environ of a signed-in read this trip decided, or of a signed-in write whose counters
# it made (the limiter still decides a write: its X-RateLimit-* headers): (the rate-limit
# settings, the limits counted as (RateLimitItem, key arguments with None for the address,
# cost)), which the signed-in fast path learns (signed_in_fast_path.py).
DECIDED = "lms.limits_decided"
# In the environ of a write: (RateLimitItem, scope) of the limit its X-RateLimit-* headers
# describe (rate_limits.headers_on_writes), for the signed-in fast path to say the same.
HEADER_LIMIT = "lms.header_limit"
# limits' own counter script, run by its SHA as limits runs it (Redis caches it by that SHA).
INCR_EXPIRE_SHA = hashlib.sha1(RedisStorage.SCRIPT_INCR_EXPIRE).hexdigest()
# A counter given back: never below zero, never revived once its window expired (a DECRBY on
# a missing key would create one without a TTL), gone when it falls back to zero.
GIVE_BACK = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
local left = redis.call('decrby', KEYS[1], ARGV[1])
if left <= 0 then redis.call('del', KEYS[1]) end
return left
"""
# A counter Redis holds as something INCRBY refuses (not an integer, past 64 bits, not a
# string at all: an operator's typo, a restore of the wrong key, a hostile write to a shared
# Redis) is removed, so the next count starts it afresh with its window. Left, every count of
# it failed: the limiter fell back to counting in each process's memory (limits no longer
# shared by the workers and hosts), and the key, without a TTL, kept it so for good.
REPAIR = f"""
local kind = redis.call('type', KEYS[1])['ok']
if kind == 'none' then return 0 end
if kind == 'string' and {shared_state.IS_STORED_INT}(redis.call('get', KEYS[1])) then
  return 0
end
redis.call('del', KEYS[1])
return 1
"""


class RoundTripRedisStorage(RedisStorage):
    """limits' Redis storage whose `incr` takes the count this request's round trip already
    made for that counter, if any (see the module's docstring)."""

    STORAGE_SCHEME = ["lms+redis", "lms+rediss"]

    def __init__(self, uri: str, **options) -> None:
        self.url = uri.removeprefix(SCHEME)
        super().__init__(self.url, **options)
        self.failing = False  # the last call failed: the limiter counts in memory until check()
        self.give_back = self.get_connection().register_script(GIVE_BACK)
        self.repair = self.get_connection().register_script(REPAIR)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        counted = _take(key, expiry, amount)
        if counted is not None:
            return counted
        try:
            try:
                value = super().incr(key, expiry, amount)
            except redis.ResponseError:
                if self.repair(keys=[self.prefixed_key(key)]):
                    log.warning("rate limit counter %s was not a number: counted afresh", key)
                # Counted again even where this repair found nothing to remove: another worker
                # may have repaired the key since; a count that fails again raises.
                value = super().incr(key, expiry, amount)
        except self.base_exceptions:
            self.failing = True
            raise
        self.failing = False
        return value

    def get(self, key: str) -> int:
        window = _window(key)
        return window[0] if window is not None else super().get(key)

    def get_expiry(self, key: str) -> float:
        window = _window(key)
        return window[1] if window is not None else super().get_expiry(key)

    def check(self) -> bool:
        healthy = super().check()
        if healthy:
            self.failing = False
        return healthy


def storage_beside(redis_url: str | None) -> RoundTripRedisStorage | None:
    """The limiter's storage, when its counters can travel in one pipeline with commands for
    `redis_url` (the same Redis, the limiter not failing); else None. Also read by the catalog
    fast path (catalog_fast_path.py), outside any request context."""
    if not (limiter.enabled and limiter.initialized):
        return None
    storage = limiter.storage
    if not isinstance(storage, RoundTripRedisStorage) or storage.failing:
        return None
    return storage if redis_url and storage.url == redis_url else None


def counting_storage(redis_url: str | None) -> RoundTripRedisStorage | None:
    """The limiter's storage when a count made outside Flask-Limiter is the one it would make
    and decide on: a fixed window, in the Redis of `redis_url`, not on its in-memory fallback;
    else None. The catalog fast path counts with it, and a signed-in read is decided with it."""
    if getattr(limiter, "_storage_dead", True) or \
            type(limiter.limiter) is not FixedWindowRateLimiter:
        return None
    return storage_beside(redis_url)


def limit_settings(app) -> tuple:
    """The app's rate-limit settings (RATE_LIMIT_*, RATELIMIT_*) as they are now."""
    names = app.extensions.get("rate_limit_setting_names")
    if names is None:
        names = app.extensions["rate_limit_setting_names"] = tuple(sorted(
            name for name in app.config if name.startswith(("RATE_LIMIT", "RATELIMIT"))))
    return tuple(app.config.get(name) for name in names)


def _storage() -> RoundTripRedisStorage | None:
    """The limiter's storage, when its counters can travel with the shared state."""
    return storage_beside(current_app.config.get("REDIS_URL"))


def _by_window(limit):
    """Flask-Limiter evaluates a check's limits shortest window first."""
    return limit.limit


class Plan(NamedTuple):
    """The limits an endpoint's two checks evaluate, and what they were resolved under."""
    settings: tuple  # limit_settings when resolved
    hinted: bool  # the endpoint had hints (Flask-Limiter's has_hints)
    before: list  # its before_request's check, shortest window first
    in_view: list  # its decorated view's check
    decidable: bool  # no limit that only tests or has meta limits; no headers on every answer


def _limits(trip: dict) -> Plan:
    """The limits Flask-Limiter's two checks of this request evaluate (its before_request's,
    then its decorated view's), in its order: its limit resolution with the arguments its
    checks pass (Limiter.__filter_limits in Flask-Limiter 4.1.1, which
    tests/test_one_round_trip.py pins). Kept per app, endpoint and method: resolving costs
    about what the saved round trip does. Resolved again when the settings or the endpoint's
    hints changed; a kept answer the limiter no longer follows otherwise (a limit changed at
    run time by hand) is dropped at the end of the request that shows it (`end_trip`)."""
    known = current_app.extensions.setdefault("round_trip_limits", {})
    endpoint = limiter.identify_request()
    trip["limits"] = (endpoint, request.method)
    manager = limiter.limit_manager
    settings, hinted = limit_settings(current_app), manager.has_hints(endpoint)
    found = known.get((endpoint, request.method))
    if found is not None and found.hinted == hinted and found.settings == settings:
        return found
    view = current_app.view_functions.get(endpoint)
    name = get_qualified_name(view) if view else ""
    marked = name in limiter._marked_for_limiting or hinted
    before = list(dict.fromkeys(manager.resolve_limits(
        current_app, endpoint, request.blueprint, name, True, marked)[0]))
    in_view = []
    # The view's decorator checks, unless Flask answers an automatic OPTIONS without the view.
    if name in limiter._marked_for_limiting and not (
            request.method == "OPTIONS" and request.url_rule.provide_automatic_options):
        defaults, decorated = manager.resolve_limits(
            current_app, endpoint, request.blueprint, name, False, marked)
        in_view = [limit for limit in dict.fromkeys(defaults) if limit not in before] + decorated
    config = current_app.config
    decidable = not (config.get("RATELIMIT_HEADERS_ENABLED") or config.get("RATELIMIT_META")) \
        and not any(limit.deduct_when or limit.meta_limits for limit in before + in_view)
    found = known[(endpoint, request.method)] = Plan(
        settings, hinted, sorted(before, key=_by_window), sorted(in_view, key=_by_window),
        decidable)
    return found


class Counter(NamedTuple):
    """One counter a check hits (Limiter.__evaluate_limits)."""
    key: str
    expiry: int
    cost: int
    allowed: int  # the limit's amount
    # For the signed-in fast path: the limit and its key's arguments with None for the
    # caller's address, when the limit is keyed by the address alone and nothing in it is
    # decided per request (an exemption, a cost function); else None.
    learnable: tuple | None


def _counters(limits: list) -> list[Counter]:
    """The counters one check hits (Limiter.__evaluate_limits): skipping what it skips, and
    what it only tests (deduct_when)."""
    endpoint = limiter.identify_request()
    counters = []
    address = request.remote_addr
    for limit in limits:
        if limit.is_exempt or limit.method_exempt or limit.deduct_when:
            continue
        args = [limit.key_func(), limit.scope_for(endpoint, request.method)]
        if all(args):
            fixed = (limit.exempt_when is None and not callable(limit.cost)
                     and args[0] == address and args[1] != address)
            counters.append(Counter(
                limit.limit.key_for(RATE_LIMIT_KEY_PREFIX, *args), limit.limit.get_expiry(),
                limit.deduction_amount, limit.limit.amount,
                (limit.limit, (None, args[1]), limit.deduction_amount) if fixed else None))
    return counters


def _decide(trip: dict, counted: list[Counter]) -> bool:
    """Whether this request is decided here (see the module's docstring): a decidable signed-in
    read whose every counter was counted in the trip and is within its amount. Its counts are
    then taken as the limiter's own, so none is given back. The limits it was decided under
    are left in the environ (`DECIDED`) when the signed-in fast path could count them itself."""
    if not trip.get("decidable"):
        return False
    counts, seen = trip["counts"], {}
    for counter in counted:
        index = seen[counter.key] = seen.get(counter.key, -1) + 1
        entries = counts.get(counter.key, ())
        if index >= len(entries) or entries[index][2] > counter.allowed:
            return False  # not counted here (an error), or over: the limiter decides
    trip["counts"], trip["decided"] = {}, True
    _leave_learnable(trip, counted)
    return True


def _before_limits() -> bool:
    """The limiter's request filter, called before it evaluates any limit of a check (its
    before_request, then a decorated view's): at the first, plan both checks' counters, and
    send the round trip now if the before_request check counts anything; otherwise leave the
    view's counters to the pipeline's hook. Exempts the request from a check only when the
    trip decided it (`_decide`)."""
    trip = g.get("round_trip")
    if trip is not None:
        return trip.get("decided", False)
    g.round_trip = trip = {"plan": [], "counts": {}}
    storage = _storage()
    if storage is None:
        return False
    plan = _limits(trip)
    signed_in = (plan.decidable and "Authorization" in request.headers
                 and counting_storage(storage.url) is not None)
    trip["decidable"] = signed_in and request.method in READS
    trip["learnable_write"] = signed_in and request.method not in READS
    now, later = _counters(plan.before), _counters(plan.in_view)
    if now:
        _send(storage, trip, now + later)
        _offer_write(trip, now + later)
        return _decide(trip, now + later)
    trip["plan"] = later
    if not later and (trip["decidable"] or trip["learnable_write"]) and _repeatable(plan):
        # Nothing to count: the limiter counts nothing for this read either.
        request.environ[DECIDED] = (plan.settings, ())
    return False


def _offer_write(trip: dict, counted: list[Counter]) -> None:
    """A signed-in write whose counters this trip made: its limits are left for the signed-in
    fast path to learn (`_leave_learnable`), should the write's view let it. The limiter still
    counts (from the trip's counts) and decides this request."""
    if trip.get("learnable_write"):
        _leave_learnable(trip, counted)


def _leave_learnable(trip: dict, counted: list[Counter]) -> None:
    """The limits this request was counted against, left in the environ (`DECIDED`) when the
    signed-in fast path could count them itself: each keyed by the address alone and the same
    for every request to the endpoint."""
    plan = current_app.extensions["round_trip_limits"].get(trip["limits"])
    if plan is not None and _repeatable(plan) and all(counter.learnable for counter in counted):
        request.environ[DECIDED] = (plan.settings,
                                    tuple(counter.learnable for counter in counted))


def _repeatable(plan: Plan) -> bool:
    """Whether every request to the endpoint hits the counters this one does (no limit is
    exempted per request)."""
    return not any(limit.exempt_when for limit in plan.before + plan.in_view)


def read_shared_state() -> None:
    """before_request (the pipeline's hook): the shared state, from the round trip already
    made or in one made now with the view's planned counters."""
    trip = g.setdefault("round_trip", {"plan": [], "counts": {}})
    if "reply" not in trip:
        storage = _storage() if trip["plan"] else None
        if storage is None:
            shared_state.prefetch(catalog_cache.prefetch_keys())
            return
        _send(storage, trip, trip["plan"])
        _offer_write(trip, trip["plan"])
        _decide(trip, trip["plan"])
    shared_state.prefetch(fetched=trip.pop("reply"))


def _send(storage: RoundTripRedisStorage, trip: dict, planned) -> None:
    """One pipeline: the shared state's MGET, then each planned counter's script. The counts
    wait in `trip["counts"]` for the storage's incr, the MGET's reply (or its error) in
    `trip["reply"]` for `read_shared_state`."""
    keys = shared_state.request_keys(catalog_cache.prefetch_keys())
    windows = request.method not in READS  # a write's headers say what is left, and when
    commands = [("MGET", *keys)]
    for key, expiry, amount, _allowed, _learnable in planned:
        commands.append(("EVALSHA", INCR_EXPIRE_SHA, 1, storage.prefixed_key(key), expiry,
                         amount))
        if windows:
            commands.append(("TTL", storage.prefixed_key(key)))
    try:
        replies = redis_client.one_trip(redis_client.get(), commands)
    except redis.RedisError as exc:
        trip["reply"] = (keys, exc)
        return
    trip["reply"] = (keys, replies[0])
    step, now = 1 + windows, time.time()
    for index, (key, expiry, amount, _allowed, _learnable) in enumerate(planned):
        count = replies[1 + index * step]
        if isinstance(count, Exception):  # e.g. NOSCRIPT: the limiter's incr counts it
            continue
        ends = None
        if windows and not isinstance(ttl := replies[2 + index * step], Exception):
            ends = max(ttl, 0) + now  # as limits' RedisStorage.get_expiry says it
        trip["counts"].setdefault(key, []).append((expiry, amount, int(count), ends))


def _take(key: str, expiry: int, amount: int) -> int | None:
    """The count this request's round trip made for the counter `key`, once."""
    trip = g.get("round_trip") if has_request_context() else None
    if not trip or "limits" not in trip:
        return None  # nothing was planned for this request
    pending = trip["counts"].get(key)
    if pending and pending[0][:2] == (expiry, amount):
        _expiry, _amount, count, ends = pending.pop(0)
        if ends is not None:
            trip.setdefault("windows", {})[key] = (count, ends)
        return count
    trip["missed"] = True  # the limiter counts what was not counted ahead: plan afresh
    return None


def _window(key: str) -> tuple[int, float] | None:
    """The count and window end of the counter `key` that this request's round trip made and
    the limiter took (a write's), else None."""
    trip = g.get("round_trip") if has_request_context() else None
    return trip.get("windows", {}).get(key) if trip else None


def end_trip(_exc: BaseException | None = None) -> None:
    """teardown_request: end the request's trip (g outlives a request under an enclosing app
    context), giving back the counters counted ahead that the limiter did not take; a plan
    that missed is resolved again for the next request."""
    trip = g.pop("round_trip", None) or {}
    unused = [(key, amount) for key, entries in trip.get("counts", {}).items()
              for _expiry, amount, _count, _ends in entries]
    if unused or trip.get("missed"):
        current_app.extensions.get("round_trip_limits", {}).pop(trip.get("limits"), None)
    storage = limiter.storage if unused and limiter.initialized else None
    if not isinstance(storage, RoundTripRedisStorage):
        return
    try:
        for key, amount in unused:
            storage.give_back(keys=[storage.prefixed_key(key)], args=[amount])
    except redis.RedisError as exc:  # their windows expire them anyway
        log.warning("rate limit counts not given back: %s", exc)


# Registered once, on the process's one limiter (every app's); it runs only where the app's
# limiter is enabled, and does nothing where `_storage()` says the counters cannot travel.
limiter.request_filter(_before_limits)
