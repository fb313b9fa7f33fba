"""The catalog fast path (utils/pipeline/catalog_fast_path.py): a guest's current cached page
answered before Flask runs must be the answer Flask would have sent, counted against the same
limits, refused by the same blocks, in one Redis round trip; anything it cannot vouch for goes
to Flask."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import redis as redis_lib
from flask import request, request_started
from prometheus_client import REGISTRY

from models import db
from tests.support.fast_apps import redis_app
from tests.support.queries import recorded_statements
from utils.extensions import limiter
from utils.pipeline import blocked_ips, redis_client, round_trip

API = "/api/v1"
STUDENTS = "https://students.example.test"


@pytest.fixture
def fast_app(app):
    """An app with Redis for the cache and the limits, a small public limit, two origins."""
    with redis_app(app, RATE_LIMIT_PUBLIC="6 per minute", FRONTEND_URL_STUDENTS=STUDENTS) as fast:
        yield fast


def _course(app) -> int:
    from models import Course, User

    with app.app_context():
        teacher = User(email="fast-teacher@example.com", role="instructor", first_name="Fast",
                       last_name="Teacher")
        teacher.set_password("Passw0rd!")
        db.session.add(teacher)
        db.session.flush()
        course = Course(title="Fast course", slug="fast-course", instructor_id=teacher.id,
                        status="published", price=0)
        db.session.add(course)
        db.session.commit()
        return course.id


@contextmanager
def flask_handled(app):
    """The paths Flask itself handled meanwhile (its request_started signal)."""
    seen: list[str] = []

    def started(sender, **extra):
        seen.append(request.path)

    with request_started.connected_to(started, app):
        yield seen


class RoundTrips:
    """Counts what redis-py sends over any connection (each send is one round trip)."""

    def __init__(self, monkeypatch):
        self.count = 0
        original = redis_lib.connection.AbstractConnection.send_packed_command

        def counted(connection, command, check_health=True):
            self.count += 1
            return original(connection, command, check_health)

        monkeypatch.setattr(redis_lib.connection.AbstractConnection, "send_packed_command",
                            counted)


def _without_own(headers) -> dict:
    return {name: value for name, value in headers.items() if name != "X-Request-ID"}


def _fast_path(app):
    return app.wsgi_app.app  # inside TrustedProxies


def test_a_hit_is_the_answer_flask_sends_in_one_round_trip(fast_app, monkeypatch):
    course_id = _course(fast_app)
    client = fast_app.test_client()
    for path in (f"{API}/public/courses/{course_id}", f"{API}/public/get-courses?per_page=5"):
        miss = client.get(path)  # Flask computes, stores the copy, the fast path learns
        assert miss.status_code == 200
        flask_hit = client.get(path)  # not yet: the learning happens on the way out of Flask
        trips = RoundTrips(monkeypatch)
        with recorded_statements(fast_app) as statements, flask_handled(fast_app) as handled:
            fast = client.get(path, headers={"X-Request-ID": "trace-123"})
        assert trips.count == 1 and statements == [] and handled == []
        assert fast.status_code == 200 and fast.data == miss.data == flask_hit.data
        assert fast.headers["X-Request-ID"] == "trace-123"
        assert _without_own(fast.headers) == _without_own(flask_hit.headers)
        monkeypatch.undo()
        # The same request with the fast path off: Flask's own answer, header for header.
        fast_app.config["CATALOG_FAST_PATH"] = False
        slow = client.get(path)
        fast_app.config["CATALOG_FAST_PATH"] = True
        assert slow.data == fast.data
        assert _without_own(slow.headers) == _without_own(fast.headers)
        assert fast.headers["ETag"] == slow.headers["ETag"]
        assert "Content-Security-Policy" in fast.headers and fast.headers["Vary"]


def test_headers_are_learned_per_origin_and_scheme(fast_app):
    course_id = _course(fast_app)
    client = fast_app.test_client()
    path = f"{API}/public/courses/{course_id}"
    cases = ({}, {"Origin": STUDENTS}, {"Origin": "https://elsewhere.example"})
    for n, (base_url, headers) in enumerate(
            (url, headers) for url in ("http://localhost", "https://localhost")
            for headers in cases):
        # An address per case: its four requests stay within the public limit (6 a minute),
        # so both answers compared are the page's, not two 429s a second apart.
        sent = {"headers": headers, "base_url": base_url,
                "environ_base": {"REMOTE_ADDR": f"198.51.100.{n + 1}"}}
        client.get(path, **sent)
        client.get(path, **sent)  # learned from this one
        fast_app.config["CATALOG_FAST_PATH"] = False
        slow = client.get(path, **sent)
        fast_app.config["CATALOG_FAST_PATH"] = True
        fast = client.get(path, **sent)
        assert slow.status_code == fast.status_code == 200, (base_url, headers)
        assert _without_own(fast.headers) == _without_own(slow.headers), (base_url, headers)
    allowed = client.get(path, headers={"Origin": STUDENTS})
    assert allowed.headers["Access-Control-Allow-Origin"] == STUDENTS
    other = client.get(path, headers={"Origin": "https://elsewhere.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    secure = client.get(path, base_url="https://localhost")
    assert "Strict-Transport-Security" in secure.headers
    assert "Strict-Transport-Security" not in client.get(path).headers


def test_counts_against_the_same_limit_and_flask_refuses_the_one_over(fast_app):
    course_id = _course(fast_app)
    client = fast_app.test_client()
    path = f"{API}/public/courses/{course_id}"
    address = {"REMOTE_ADDR": "203.0.113.7"}
    statuses = [client.get(path, environ_base=address).status_code for _ in range(6)]
    assert statuses == [200] * 6  # "6 per minute": two by Flask, four by the fast path
    with fast_app.app_context():
        keys = redis_client.get().keys("LIMITS:*203.0.113.7*")
        assert len(keys) == 1 and int(redis_client.get().get(keys[0])) == 6
    refused = client.get(path, environ_base=address)
    assert refused.status_code == 429 and refused.json["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    # Another address has its own window.
    assert client.get(path, environ_base={"REMOTE_ADDR": "203.0.113.8"}).status_code == 200


def test_a_request_the_fast_path_counted_and_passed_on_is_counted_once(fast_app):
    from models import Course

    course_id = _course(fast_app)
    client = fast_app.test_client()
    path = f"{API}/public/courses/{course_id}"
    address = {"REMOTE_ADDR": "203.0.113.40"}

    def window() -> int:
        with fast_app.app_context():
            (key,) = redis_client.get().keys("LIMITS:*203.0.113.40*")
            return int(redis_client.get().get(key))

    client.get(path, environ_base=address)
    client.get(path, environ_base=address)  # learned
    assert window() == 2
    with fast_app.app_context():  # the copy goes stale: the next request is a miss
        db.session.get(Course, course_id).title = "Stale now"
        db.session.commit()
    with flask_handled(fast_app) as handled:  # computed by the view's reader, before Flask
        assert client.get(path, environ_base=address).json["course"]["title"] == "Stale now"
    assert handled == [] and window() == 3
    with fast_app.app_context():  # unpublished: the reader declines, Flask says 404
        db.session.get(Course, course_id).status = "draft"
        db.session.commit()
    with flask_handled(fast_app) as handled:
        assert client.get(path, environ_base=address).status_code == 404
    assert handled == [path] and window() == 4  # counted by the fast path only
    with flask_handled(fast_app) as handled:
        assert client.get(path, environ_base=address).status_code == 404
    assert handled == [path] and window() == 5
    # ...and what Flask then learns still counts (it saw no limits for the counted request).
    assert _fast_path(fast_app).endpoints["public.course"].limits


def test_a_limit_changed_at_run_time_is_learned_again(fast_app):
    course_id = _course(fast_app)
    client = fast_app.test_client()
    path = f"{API}/public/courses/{course_id}"
    address = {"REMOTE_ADDR": "203.0.113.50"}
    assert [client.get(path, environ_base=address).status_code for _ in range(3)] == [200] * 3
    fast_app.config["RATE_LIMIT_PUBLIC"] = "2 per minute"  # was 6
    try:
        with flask_handled(fast_app) as handled:
            statuses = [client.get(path, environ_base=address).status_code for _ in range(3)]
    finally:
        fast_app.config["RATE_LIMIT_PUBLIC"] = "6 per minute"
    # The 2-a-minute window (a key of its own): the first request learns it again in Flask,
    # the second is counted in it by the fast path, the third is over and refused by Flask.
    assert statuses == [200, 200, 429] and handled == [path, path]


def test_a_blocked_address_is_refused_though_the_page_is_cached(fast_app):
    course_id = _course(fast_app)
    client = fast_app.test_client()
    path = f"{API}/public/courses/{course_id}"
    address = {"REMOTE_ADDR": "203.0.113.9"}
    for _ in range(3):
        assert client.get(path, environ_base=address).status_code == 200
    with fast_app.app_context():
        blocked_ips.block_ip("203.0.113.9", seconds=600, reason="test")
    refused = client.get(path, environ_base=address)
    assert refused.status_code == 403 and refused.json["code"] == "ip_blocked"
    # Refused before its view's limit counts it, as Flask alone refuses it: the window stays.
    with fast_app.app_context():
        (key,) = redis_client.get().keys("LIMITS:*203.0.113.9*")
        assert int(redis_client.get().get(key)) == 3


def test_a_catalog_write_is_seen_at_once(fast_app):
    from models import Course

    course_id = _course(fast_app)
    client = fast_app.test_client()
    path = f"{API}/public/courses/{course_id}"
    for _ in range(3):
        assert client.get(path).json["course"]["title"] == "Fast course"
    with fast_app.app_context():
        db.session.get(Course, course_id).title = "Renamed course"
        db.session.commit()
    assert client.get(path).json["course"]["title"] == "Renamed course"


def test_what_it_cannot_vouch_for_goes_to_flask(fast_app, make_user, auth_headers):
    course_id = _course(fast_app)
    client = fast_app.test_client()
    path = f"{API}/public/courses/{course_id}"
    first = client.get(path)
    client.get(path)
    # A conditional request: Flask's 304.
    conditional = client.get(path, headers={"If-None-Match": first.headers["ETag"]})
    assert conditional.status_code == 304 and conditional.data == b""
    # HEAD: Flask.
    assert client.head(path).status_code == 200
    # Redis gone: Flask answers from the database (no copy, no error).
    real = fast_app.config["REDIS_URL"]
    fast_app.config["REDIS_URL"] = "redis://127.0.0.1:1/0"
    try:
        down = client.get(path)
    finally:
        fast_app.config["REDIS_URL"] = real
    assert down.status_code == 200 and down.json == first.json
    # The limiter counting in memory (its storage marked dead): Flask answers.
    fresh = {"REMOTE_ADDR": "203.0.113.30"}  # a window of its own ("6 per minute")
    with flask_handled(fast_app) as handled:
        limiter._storage_dead = True
        try:
            assert client.get(path, environ_base=fresh).status_code == 200
        finally:
            limiter._storage_dead = False
        assert client.get(path, environ_base=fresh).status_code == 200
    assert handled == [path]  # the first only
    # The limiter's storage failing (its counters cannot travel in the pipeline): Flask.
    with flask_handled(fast_app) as handled:
        limiter.storage.failing = True
        try:
            assert client.get(path, environ_base=fresh).status_code == 200
        finally:
            limiter.storage.failing = False
    assert handled == [path]


def test_hostile_queries_and_many_origins_go_to_flask_counted_once(fast_app):
    from utils.pipeline.fast_reads import TEMPLATES_KEPT

    course_id = _course(fast_app)
    client = fast_app.test_client()
    path = f"{API}/public/courses/{course_id}"
    address = {"REMOTE_ADDR": "203.0.113.60"}
    client.get(path, environ_base=address)
    client.get(path, environ_base=address)  # learned; the window holds 2
    for query, status in (("page=%00", 422), ("q=%1b%5b31m", 422),
                          ("per_page=" + "9" * 40, 200), ("x=" + "a" * 5000, 200)):
        with flask_handled(fast_app) as handled:
            answer = client.get(f"{path}?{query}", environ_base=address)
        # No copy of such a page: Flask refuses a control character; a query the view does
        # not read is computed by its reader, as Flask would (it ignores the query too).
        assert handled == ([path] if status == 422 else []), query
        assert answer.status_code == status, (query, answer.get_json())
        if status == 422:
            assert answer.json["code"] == "validation_error"
        else:
            assert answer.json["course"]["id"] == course_id
    with fast_app.app_context():
        (key,) = redis_client.get().keys("LIMITS:*203.0.113.60*")
        assert int(redis_client.get().get(key)) == 6  # each counted once
    # Origins are the client's to choose: the learned header sets stay bounded.
    for n in range(TEMPLATES_KEPT + 10):
        client.get(path, headers={"Origin": f"https://o{n}.example"},
                   environ_base={"REMOTE_ADDR": f"198.51.100.{n % 250}"})
    assert len(_fast_path(fast_app).templates) <= TEMPLATES_KEPT


def test_fast_answers_are_counted_in_the_metrics(fast_app):
    course_id = _course(fast_app)
    client = fast_app.test_client()
    path = f"{API}/public/courses/{course_id}"
    labels = {"method": "GET", "endpoint": f"{API}/public/courses/<int:course_id>",
              "status": "200"}

    def answered() -> float:
        return REGISTRY.get_sample_value("lms_http_requests_total", labels) or 0.0

    client.get(path)
    client.get(path)
    before = answered()
    with flask_handled(fast_app) as handled:
        for _ in range(3):
            assert client.get(path).status_code == 200
    assert handled == [] and answered() == before + 3


def test_the_limiter_internals_it_reads_are_still_there(fast_app):
    """The fast path reads Flask-Limiter's fallback flag and `limits`' Redis script: an upgrade
    that renames them must fail here, not silently send every page to Flask."""
    from limits.storage import RedisStorage
    from limits.strategies import FixedWindowRateLimiter

    assert limiter._storage_dead is False
    assert isinstance(limiter.storage, RedisStorage)
    assert type(limiter.limiter) is FixedWindowRateLimiter
    assert limiter.storage.lua_incr_expire.sha == round_trip.INCR_EXPIRE_SHA
    assert limiter.storage.prefixed_key("k") != "k"
