"""The signed-in fast path's one write: a progress heartbeat (routes/enrollments_routes.py,
`signed_in_write`) answered before Flask runs must be the answer Flask would have sent, with
the X-RateLimit-* headers its limiter sends, counted once against the same limits, in one
Redis round trip and one statement; anything it cannot vouch for (another body, a body Flask
would refuse, another user's enrollment, a revoked token, Redis down) goes to Flask with its
body intact, counted once."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest
import redis as redis_lib
from sqlalchemy import select

from models import Enrollment, LessonProgress, db
from tests.support.assertions import error, ok
from tests.support.concurrency import all_at_once
from tests.support.queries import recorded_statements
from tests.test_catalog_fast_path import RoundTrips, flask_handled
from tests.test_signed_in_fast_path import (  # noqa: F401 (fast_app: a fixture)
    API,
    LIMIT,
    STUDENTS,
    Learner,
    _counter,
    _token,
    _without_own,
    fast_app,
)
from tests.support.learning import actor_in, build_course
from utils.extensions import limiter
from utils.pipeline.signed_in_fast_path import WRITE_BODY_MAX

PER_REQUEST = ("X-Request-ID", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def _postgres_only(app) -> None:
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        pytest.skip("the heartbeat's one statement is PostgreSQL's: on SQLite every write is "
                    "Flask's (test_a_write_on_sqlite_is_flasks)")


def _shared(headers) -> dict:
    return {name: value for name, value in headers.items() if name not in PER_REQUEST}


def _watched(app, enrollment: int, lesson: int) -> int | None:
    with app.app_context():
        return db.session.scalar(select(LessonProgress.watch_time_seconds).where(
            LessonProgress.enrollment_id == enrollment, LessonProgress.lesson_id == lesson))


def _without_times(body: dict) -> dict:
    """An answer without what a second write changes: the times of the last access."""
    copy = json.loads(json.dumps(body))
    copy["lesson_progress"].pop("last_accessed_at")
    copy["enrollment"].pop("last_accessed_at")
    copy["lesson_progress"].pop("watch_time_seconds")
    return copy


class Beat:
    """A learner's heartbeat route on lesson 2 (begun by Flask's first answer), and how to
    send to it."""

    def __init__(self, app, ip: str = "198.51.100.40", n: int = 1):
        self.app, self.learner = app, Learner(app, n)
        self.client = app.test_client()
        self.lesson = self.learner.course.lesson_ids[1]
        self.path = f"{API}/enrollments/{self.learner.enrollment}/lessons/{self.lesson}/complete"
        self.ip = ip

    def post(self, body=None, *, raw: bytes | None = None, headers=None, path=None,
             content_type="application/json", method="POST", query=""):
        data = raw if raw is not None else json.dumps(body).encode()
        return self.client.open((path or self.path) + query, method=method, data=data,
                                content_type=content_type,
                                headers={**self.learner.student.headers, "Origin": STUDENTS,
                                         **(headers or {})},
                                environ_base={"REMOTE_ADDR": self.ip})

    def counted(self) -> int:
        return _counter(self.app, self.path, self.ip)


def test_a_heartbeat_is_flasks_answer_without_flask(fast_app, monkeypatch):
    _postgres_only(fast_app)
    beat = Beat(fast_app)
    learned = beat.post({"watch_time_seconds": 30})  # Flask answers; the fast path learns
    assert learned.status_code == 200, learned.get_json()
    assert learned.headers["X-RateLimit-Remaining"] == str(LIMIT - 1)

    trips = RoundTrips(monkeypatch)
    with recorded_statements(fast_app) as statements, flask_handled(fast_app) as handled:
        fast = beat.post({"watch_time_seconds": 40}, headers={"X-Request-ID": "trace-7"})
    monkeypatch.undo()
    assert handled == []  # Flask never saw it
    assert trips.count == 1  # the counter, its window, the token's state: one trip
    assert len(statements) == 1 and statements[0].lstrip().startswith("WITH target AS")
    assert fast.status_code == 200
    assert fast.get_json()["lesson_progress"]["watch_time_seconds"] == 40
    assert _without_times(fast.get_json()) == _without_times(learned.get_json())
    assert fast.headers["X-Request-ID"] == "trace-7"
    assert _shared(fast.headers) == _shared(learned.headers)
    assert fast.headers["Access-Control-Allow-Origin"] == STUDENTS
    assert fast.headers["X-RateLimit-Limit"] == str(LIMIT)
    assert fast.headers["X-RateLimit-Remaining"] == str(LIMIT - 2)
    assert 0 <= int(fast.headers["X-RateLimit-Reset"]) - int(
        learned.headers["X-RateLimit-Reset"]) <= 1
    assert _watched(fast_app, beat.learner.enrollment, beat.lesson) == 40
    assert beat.counted() == 2  # each request counted once, as Flask alone counts them

    # The same request with the fast path off: Flask's own answer, header for header.
    fast_app.config["SIGNED_IN_FAST_PATH"] = False
    with flask_handled(fast_app) as handled:
        slow = beat.post({"watch_time_seconds": 35})
    fast_app.config["SIGNED_IN_FAST_PATH"] = True
    assert handled == [beat.path]
    assert slow.headers["X-RateLimit-Remaining"] == str(LIMIT - 3)
    assert _shared(slow.headers) == _shared(fast.headers)
    assert _without_times(slow.get_json()) == _without_times(fast.get_json())
    assert slow.get_json()["lesson_progress"]["watch_time_seconds"] == 40  # the furthest


def test_the_by_course_route_by_post_and_put(fast_app):
    _postgres_only(fast_app)
    beat = Beat(fast_app, "198.51.100.41")
    course = beat.learner.course
    path = f"{API}/enrollments/get-enrollments/{course.id}/lessons/{beat.lesson}/progress"
    for method, watched in (("POST", 12), ("PUT", 14)):
        _reset(fast_app)  # room (the limit is small)
        ok(beat.post({"watch_time_seconds": watched - 1}, path=path, method=method))  # learns
        with flask_handled(fast_app) as handled:
            body = ok(beat.post({"watch_time_seconds": watched}, path=path, method=method))
        assert handled == [], method
        assert body["lesson_progress"]["watch_time_seconds"] == watched
        assert body["enrollment"]["id"] == beat.learner.enrollment
    # An empty object on this route is a visit (no completion): answered here too.
    _reset(fast_app)
    with flask_handled(fast_app) as handled:
        visit = ok(beat.post({}, path=path))
    assert handled == []
    assert visit["lesson_progress"]["watch_time_seconds"] == 14
    assert visit["lesson_progress"]["completed"] is False


def test_what_the_fast_path_cannot_vouch_for_goes_to_flask_with_its_body(fast_app):
    _postgres_only(fast_app)
    beat = Beat(fast_app, "198.51.100.42")
    ok(beat.post({"watch_time_seconds": 30}))  # learns
    cases = [
        # (what, the request, Flask's status, its code or None)
        ("a completion", dict(body={"completed": True}), 200, None),
        ("an empty object on /complete (a completion)", dict(body={}), 200, None),
        ("malformed JSON", dict(raw=b'{"watch_time_seconds": 3'), 400, "malformed_json"),
        ("NUL in a key", dict(raw=b'{"watch_time_seconds": 3, "a\\u0000": 1}'), 422, None),
        ("too deep", dict(raw=b"[" * 40 + b"]" * 40), 400, "json_too_deep"),
        ("a watch time past ten days", dict(body={"watch_time_seconds": 864001}), 422, None),
        ("a fraction for a number", dict(body={"watch_time_seconds": 5.5}), 422, None),
        ("a negative number", dict(body={"watch_time_seconds": -1}), 422, None),
        ("a number past any column", dict(body={"watch_time_seconds": 10 ** 30}), 422, None),
        ("NUL in a value", dict(raw=b'{"watch_time_seconds": "3\\u0000"}'), 422, None),
        ("not an object", dict(body=[1, 2]), 422, None),
        ("not JSON by its type", dict(body={"watch_time_seconds": 3},
                                      content_type="text/plain"), 415, None),
        ("a query string", dict(body={"watch_time_seconds": 31}, query="?x=1"), 200, None),
        ("a long body", dict(raw=b'{"watch_time_seconds": 32' + b" " * WRITE_BODY_MAX + b"}"),
         200, None),
    ]
    for what, request, status, code in cases:
        before = beat.counted()
        with flask_handled(fast_app) as handled:
            response = beat.post(**request)
        assert handled == [beat.path], what
        assert response.status_code == status, (what, response.get_json())
        if code is not None:
            assert response.get_json()["code"] == code, what
        assert beat.counted() == before + 1, what  # counted once, by Flask
        if status == 200:  # Flask read the same body the fast path had read
            assert "X-RateLimit-Remaining" in response.headers, what
        _reset(fast_app)  # room again for the next case (the limit is small)
    assert _watched(fast_app, beat.learner.enrollment, beat.lesson) == 32
    with fast_app.app_context():
        completed = db.session.scalar(select(LessonProgress.completed).where(
            LessonProgress.enrollment_id == beat.learner.enrollment,
            LessonProgress.lesson_id == beat.lesson))
    assert completed is True  # the completion Flask read from the body the fast path put back


def _reset(app) -> None:
    store = redis_lib.Redis.from_url(app.config["REDIS_URL"])
    counted = store.keys("LIMITS*")
    if counted:
        store.delete(*counted)


def test_another_learner_a_revoked_token_and_a_closed_enrollment_are_flasks(fast_app):
    _postgres_only(fast_app)
    beat = Beat(fast_app, "198.51.100.43")
    ok(beat.post({"watch_time_seconds": 30}))  # learns
    other = Learner(fast_app, 2)
    before = beat.counted()
    with flask_handled(fast_app) as handled:
        refused = beat.client.post(beat.path, json={"watch_time_seconds": 99},
                                   headers=other.student.headers,
                                   environ_base={"REMOTE_ADDR": beat.ip})
    assert handled == [beat.path]
    assert error(refused, 404)["error"] == "Enrollment not found"
    assert beat.counted() == before + 1  # given back by the fast path, counted by Flask
    assert _watched(fast_app, beat.learner.enrollment, beat.lesson) == 30

    revoked = _token(fast_app, beat.learner.student.id)
    ok(beat.client.post(f"{API}/auth/logout", headers=revoked,
                        environ_base={"REMOTE_ADDR": "203.0.113.90"}))
    with flask_handled(fast_app) as handled:
        error(beat.client.post(beat.path, json={"watch_time_seconds": 50}, headers=revoked,
                               environ_base={"REMOTE_ADDR": beat.ip}), 401, "token_revoked")
    assert handled == [beat.path]
    assert _watched(fast_app, beat.learner.enrollment, beat.lesson) == 30

    _reset(fast_app)
    ok(beat.client.delete(f"{API}/enrollments/{beat.learner.enrollment}",
                          headers=beat.learner.student.headers,
                          environ_base={"REMOTE_ADDR": "203.0.113.91"}))
    with flask_handled(fast_app) as handled:
        error(beat.post({"watch_time_seconds": 60}), 403, "enrollment_inactive")
    assert handled == [beat.path]
    assert _watched(fast_app, beat.learner.enrollment, beat.lesson) == 30


def test_the_limit_is_counted_once_and_breached_as_flask_breaches_it(fast_app):
    _postgres_only(fast_app)
    beat = Beat(fast_app, "192.0.2.19")
    with flask_handled(fast_app) as handled:
        remaining = [beat.post({"watch_time_seconds": 10 + n}).headers["X-RateLimit-Remaining"]
                     for n in range(LIMIT)]
        refused = beat.post({"watch_time_seconds": 99})
    assert handled == [beat.path, beat.path]  # the first taught the fast path; the 429 is Flask's
    assert remaining == [str(LIMIT - 1 - n) for n in range(LIMIT)]
    error(refused, 429)
    assert int(refused.headers["Retry-After"]) > 0
    assert beat.counted() == LIMIT + 1  # as Flask alone leaves it
    assert _watched(fast_app, beat.learner.enrollment, beat.lesson) == 10 + LIMIT - 1


def test_redis_down_goes_to_flask_with_the_body(fast_app, monkeypatch):
    _postgres_only(fast_app)
    beat = Beat(fast_app, "198.51.100.44")
    ok(beat.post({"watch_time_seconds": 30}))  # learns

    def down(*_args, **_kwargs):
        raise redis_lib.exceptions.ConnectionError("Redis is down")

    monkeypatch.setattr(redis_lib.connection.AbstractConnection, "send_packed_command", down)
    with flask_handled(fast_app) as handled:
        response = beat.post({"watch_time_seconds": 45})
    monkeypatch.undo()
    assert handled == [beat.path]
    # Flask's own answer with Redis down (its limiter counts in memory), from the same body.
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["lesson_progress"]["watch_time_seconds"] == 45
    assert _watched(fast_app, beat.learner.enrollment, beat.lesson) == 45


def test_a_write_on_sqlite_is_flasks(fast_app):
    """Off PostgreSQL the writer declines (the one statement is PostgreSQL's): every heartbeat
    is Flask's, counted once."""
    if fast_app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        pytest.skip("the PostgreSQL pass answers heartbeats on the fast path (tests above)")
    beat = Beat(fast_app, "198.51.100.45")
    ok(beat.post({"watch_time_seconds": 30}))
    with flask_handled(fast_app) as handled:
        body = ok(beat.post({"watch_time_seconds": 40}))
    assert handled == [beat.path]
    assert body["lesson_progress"]["watch_time_seconds"] == 40
    assert beat.counted() == 2


def test_heartbeats_at_once_with_a_completion_keep_the_furthest_point_and_the_completion(
        fast_app):
    """Eight heartbeats of one lesson and its completion sent at once, each from an address of
    its own (the limit is per address): one progress row, the furthest point, the completion
    and its time, the stored percentage the completion's, whichever path answered each."""
    _postgres_only(fast_app)
    client = fast_app.test_client()
    teacher, racer = actor_in(fast_app, "instructor", 160), actor_in(fast_app, "student", 61)
    limiter.enabled = False
    try:
        course = build_course(client, teacher, "Raced heartbeats", modules=(("R1", "R2", "R3"),))
        enrollment = ok(client.post(f"{API}/enrollments", json={"course_id": course.id},
                                    headers=racer.headers), 201)["enrollment"]["id"]
    finally:
        limiter.enabled = True
    lesson = course.lesson_ids[0]
    path = f"{API}/enrollments/{enrollment}/lessons/{lesson}/complete"

    def post(n: int, body: dict):
        def send():
            response = fast_app.test_client().post(
                path, json=body, headers=racer.headers,
                environ_base={"REMOTE_ADDR": f"198.18.0.{n}"})
            return response.status_code, response.get_json()
        return send

    ok(fast_app.test_client().post(path, json={"watch_time_seconds": 1}, headers=racer.headers,
                                   environ_base={"REMOTE_ADDR": "198.18.0.99"}))  # learns
    watched = [70, 10, 80, 30, 60, 20, 50, 40]
    with flask_handled(fast_app) as handled:
        results = all_at_once([post(n + 1, {"watch_time_seconds": w})
                               for n, w in enumerate(watched)]
                              + [post(20, {"completed": True})])
    assert [status for status, _ in results] == [200] * 9, results
    assert path in handled  # the completion is Flask's
    for sent, (_, body) in zip(watched, results):
        assert body["lesson_progress"]["watch_time_seconds"] >= sent
    assert results[-1][1]["lesson_progress"]["completed"] is True
    with fast_app.app_context():
        rows = db.session.scalars(select(LessonProgress).where(
            LessonProgress.enrollment_id == enrollment)).all()
        assert [(r.lesson_id, r.completed, r.watch_time_seconds) for r in rows] == [
            (lesson, True, max(watched))]
        assert rows[0].completed_at is not None
        assert db.session.get(Enrollment, enrollment).progress_percent == Decimal("33.33")
