"""Private PostgreSQL and Redis databases for tests that run the app in other processes (a real
gunicorn), so those tests never read or flush the suite's own data.

- `scratch_postgres(prefix)`: a context manager that creates a database named
  `<prefix>_<random>` on the server of TEST_POSTGRES_URL, yields its URL (psycopg2 spelling,
  password kept), and drops it (FORCE) on the way out. Skips without PostgreSQL, except
  under CI=true.
- `own_redis_url(ours, fallback)`: the suite's TEST_REDIS_URL pointed at database number `ours`,
  or `fallback` when the suite itself uses `ours`. Each module picks numbers no other module
  picks, so two modules never share (or flush) one Redis database.
- `flushed_redis(url)`: a context manager that empties that Redis database before and after.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from config import normalise_database_url
from tests.conftest import postgres_url, redis_url, require_service


@contextmanager
def scratch_postgres(prefix: str) -> Iterator[str]:
    url = make_url(normalise_database_url(
        require_service("PostgreSQL (TEST_POSTGRES_URL)", postgres_url())))
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def own_redis_url(ours: int, fallback: int) -> str:
    url = require_service("Redis (TEST_REDIS_URL)", redis_url())
    parts = urlsplit(url)
    suite_db = parts.path.strip("/") or "0"
    number = fallback if suite_db == str(ours) else ours
    return urlunsplit(parts._replace(path=f"/{number}"))


@contextmanager
def flushed_redis(url: str) -> Iterator[str]:
    client = redis.Redis.from_url(url, socket_timeout=5)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
