"""Rate-limit wiring: per-route limits read from config, and X-RateLimit-* headers on writes.
The limiter itself is created in utils/extensions.py; the 429 answer (with Retry-After) is
shaped by utils/middleware.py's error handler."""
from __future__ import annotations

import logging

from flask import current_app, request

from utils.extensions import limiter
from utils.pipeline.round_trip import HEADER_LIMIT, READS

log = logging.getLogger("lms.limits")


def config_limit(name: str):
    """A per-route limit read from config when the request arrives."""
    return limiter.limit(lambda: current_app.config[name])


def headers_on_writes(response):
    """X-RateLimit-* on limited writes only: reading the window costs a Redis round trip that
    the read hot path does without."""
    if request.method in READS or not limiter.enabled:
        return response
    current = limiter.current_limit
    if current is not None:
        try:
            response.headers["X-RateLimit-Limit"] = str(current.limit.amount)
            response.headers["X-RateLimit-Remaining"] = str(current.remaining)
            response.headers["X-RateLimit-Reset"] = str(current.reset_at)
            request.environ[HEADER_LIMIT] = (current.limit, current.request_args[-1])
        except Exception as exc:  # the storage is down: the answer stands without them
            log.warning("rate limit headers skipped: %s", exc)
    return response
