"""The shared Redis connection (Flask-Limiter keeps a pool of its own; the counters it counts
in a request's one round trip travel on this one, utils/pipeline/round_trip.py).

`get()` returns None when REDIS_URL is not configured, so callers fall back to the database;
one client per URL per process, created lazily (after gunicorn forks). `one_trip` sends a hot
request's commands in one write and reads their raw replies, without a pipeline object."""
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


def one_trip(client: redis.Redis, commands: list[tuple]) -> list:
    """The raw replies of `commands` (each a tuple of a command's name and arguments), sent in
    one write on one of the client's pooled connections: what `pipeline(transaction=False)`
    does, without building a pipeline and its per-reply callbacks on each request (the fast
    paths' hot reads: an integer stays an integer, a string stays bytes, a missing key None).
    An error reply is returned in its place as the exception redis-py makes of it (NOSCRIPT is
    a NoScriptError); a lost connection raises its redis-py error after the connection is
    dropped, as a pipeline drops it. No retry: a caller's fallback is Flask's own path."""
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_packed_command(connection.pack_commands(commands))
        replies = []
        for _ in commands:
            try:
                replies.append(connection.read_response())
            except redis.ResponseError as exc:
                replies.append(exc)
        return replies
    except BaseException:
        connection.disconnect()  # a reply may be half read: the connection is not reused
        raise
    finally:
        pool.release(connection)


def ping() -> bool:
    client = get()
    if client is None:
        return False
    try:
        return bool(client.ping())
    except redis.RedisError as exc:
        log.warning("redis unreachable: %s", exc)
        return False
