"""The request pipeline's hooks, wired in order by `init_pipeline(app)` (app.py calls it after
the middleware): the request's shared state read from Redis in one round trip (with the rate
limiter's counters, utils/pipeline/round_trip.py), then the blocked-address check; limit
headers on writes; the catalog cache's invalidation; the user mirror's writes after each
commit; the host's bound on password hashing, which models.User reads from `app.extensions`."""
from __future__ import annotations

from flask import Flask

from utils.pipeline import (
    blocked_ips,
    catalog_cache,
    hash_slots,
    rate_limits,
    round_trip,
    user_mirror,
)


def read_shared_state_and_refuse_blocked() -> None:
    """before_request: one MGET for what this request's checks need (its address, its token,
    a guest's cached catalog page), sent with the rate limiter's counters, then 403 for a
    blocked address."""
    round_trip.read_shared_state()
    blocked_ips.refuse_blocked_ip()


def init_pipeline(app: Flask) -> None:
    app.before_request(read_shared_state_and_refuse_blocked)
    app.teardown_request(round_trip.end_trip)
    if app.config["RATE_LIMIT_HEADERS"] == "writes":
        app.after_request(rate_limits.headers_on_writes)
    app.extensions["password_hash_slot"] = hash_slots.slot
    catalog_cache.register()
    user_mirror.register()
