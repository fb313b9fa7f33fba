"""The admin dashboard and analytics under load: kept in Redis for ADMIN_STATS_CACHE_SECONDS
(an expired copy served while one worker recomputes), and read from DATABASE_REPLICA_URL when
it is set. The rest of the suite runs with the cache off (it reads its own writes at once).
"""
from __future__ import annotations

import json
import time
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from models import User, db
from tests.conftest import postgres_url, redis_url, require_service
from tests.support.assertions import ok
from utils.pipeline import redis_client

API = "/api/v1/admin"
KEY = "lms:admin-figures:dashboard"


def students(body: dict) -> int:
    return body["users"]["by_role"]["student"]["total"]


@pytest.fixture
def cached(app):
    require_service("Redis (TEST_REDIS_URL)", redis_url())
    app.config["ADMIN_STATS_CACHE_SECONDS"] = 30
    yield app
    app.config["ADMIN_STATS_CACHE_SECONDS"] = 0


def age_entry(app, seconds: float) -> None:
    with app.app_context():
        client = redis_client.get()
        entry = json.loads(client.get(KEY))
        entry["at"] -= seconds
        client.set(KEY, json.dumps(entry))


def test_the_dashboard_is_served_from_redis_until_it_expires(cached, client, make_user,
                                                             auth_headers):
    admin = auth_headers(make_user("admin"))
    make_user()
    assert students(ok(client.get(f"{API}/dashboard", headers=admin))) == 1
    with cached.app_context():
        entry = json.loads(redis_client.get().get(KEY))
        assert students(entry["value"]) == 1
        assert 0 < redis_client.get().ttl(KEY) <= 300  # the stale copy outlives freshness

    make_user()
    # Fresh: the copy answers, the new student is not counted yet.
    assert students(ok(client.get(f"{API}/dashboard", headers=admin))) == 1
    # Expired, and another worker is recomputing (it holds the lock): the stale copy answers.
    age_entry(cached, 31)
    with cached.app_context():
        redis_client.get().set(KEY + ":lock", "1", ex=60)
    assert students(ok(client.get(f"{API}/dashboard", headers=admin))) == 1
    # Expired and nobody recomputing: this request recomputes, stores and releases the lock.
    with cached.app_context():
        redis_client.get().delete(KEY + ":lock")
    assert students(ok(client.get(f"{API}/dashboard", headers=admin))) == 2
    with cached.app_context():
        assert students(json.loads(redis_client.get().get(KEY))["value"]) == 2
        assert redis_client.get().get(KEY + ":lock") is None


def test_each_analytics_parameter_has_its_own_copy(cached, client, make_user, auth_headers):
    admin = auth_headers(make_user("admin"))
    six = ok(client.get(f"{API}/analytics/revenue?months=6", headers=admin))
    three = ok(client.get(f"{API}/analytics/revenue?months=3", headers=admin))
    assert (len(six["months"]), len(three["months"])) == (6, 3)
    assert ok(client.get(f"{API}/analytics?months=2", headers=admin))["revenue"]["months"] == \
        three["months"][1:]
    with cached.app_context():
        keys = sorted(k.decode() for k in redis_client.get().scan_iter("lms:admin-figures:*"))
    assert keys == ["lms:admin-figures:analytics:2", "lms:admin-figures:revenue:3",
                    "lms:admin-figures:revenue:6"]
    # A student is still refused, cache or not.
    assert client.get(f"{API}/analytics/revenue?months=6",
                      headers=auth_headers(make_user())).status_code == 403


def test_figures_are_computed_when_redis_is_down(cached, client, make_user, auth_headers):
    admin = auth_headers(make_user("admin"))
    cached.config["REDIS_URL"], real = "redis://127.0.0.1:1/0", cached.config["REDIS_URL"]
    try:
        started = time.monotonic()
        assert students(ok(client.get(f"{API}/dashboard", headers=admin))) == 0
        assert time.monotonic() - started < 5
    finally:
        cached.config["REDIS_URL"] = real


@pytest.fixture
def replica(app):
    """A second PostgreSQL database standing in for a read replica, holding other data."""
    url = make_url(require_service("PostgreSQL (TEST_POSTGRES_URL)", postgres_url()))
    url = url.set(drivername="postgresql+psycopg2")
    name = f"lms_replica_{uuid.uuid4().hex[:10]}"
    root = create_engine(url, isolation_level="AUTOCOMMIT")
    with root.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    replica_url = url.set(database=name).render_as_string(hide_password=False)
    engine = create_engine(replica_url)
    try:
        db.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(User.__table__.insert(), [
                {"email": f"r{n}@example.com", "first_name": "Replica", "last_name": str(n),
                 "role": "student", "is_active": True, "is_email_verified": True}
                for n in range(7)])
        app.config["DATABASE_REPLICA_URL"] = replica_url
        yield replica_url
    finally:
        app.config["DATABASE_REPLICA_URL"] = None
        replica_engine = app.extensions.pop("lms_replica_engine", None)
        if replica_engine is not None:
            replica_engine.dispose()
        engine.dispose()
        with root.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        root.dispose()


def test_dashboard_and_analytics_read_the_replica_when_one_is_set(replica, app, client,
                                                                  make_user, auth_headers):
    admin = auth_headers(make_user("admin"))
    make_user()
    body = ok(client.get(f"{API}/dashboard", headers=admin))
    # The replica's seven students, not the primary's one; and the primary's admin is not there.
    assert students(body) == 7 and body["users"]["by_role"]["admin"]["total"] == 0
    assert {u["email"] for u in body["recent"]["registrations"]} <= {
        f"r{n}@example.com" for n in range(7)}
    assert ok(client.get(f"{API}/analytics/popular-courses", headers=admin))["courses"] == []
    # Writes and everything else stay on the primary: the admin list shows the primary's users.
    listed = ok(client.get(f"{API}/users", headers=admin))
    assert listed["pagination"]["total"] == 2

    app.config["DATABASE_REPLICA_URL"] = None
    assert students(ok(client.get(f"{API}/dashboard", headers=admin))) == 1
