"""The shared Redis connection (Flask-Limiter keeps a pool of its own; the counters it counts
in a request's one round trip travel on this one, utils/pipeline/round_trip.py).

`get()` returns None when REDIS_URL is not configured, so callers fall back to the database;
one client per URL per process, created lazily (after gunicorn forks)."""
from __future__ import annotations

import logging

import redis
from flask import current_app

log = logging.getLogger("lms.redis")
_clients: dict[str, redis.Redis] = {}


def get() -> redis.Redis | None:
    url = current_app.config.get("REDIS_URL")
    if not url:
        return None
    return for_url(url)


def for_url(url: str) -> redis.Redis:
    """The process's client for `url` (what `get()` returns for the app's REDIS_URL)."""
    client = _clients.get(url)
    if client is None:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=1, socket_timeout=1, health_check_interval=30
        )
        _clients[url] = client
    return client


def ping() -> bool:
    client = get()
    if client is None:
        return False
    try:
        return bool(client.ping())
    except redis.RedisError as exc:
        log.warning("redis unreachable: %s", exc)
        return False
