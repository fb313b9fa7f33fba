"""The signed-in fast path (utils/pipeline/signed_in_fast_path.py): a learner's read answered
before Flask runs must be the answer Flask would have sent, to the same caller only, counted
against the same limits, refused by every check Flask makes (revocation, deactivation, a
password change, expiry, a tampered or refresh token, a blocked address, another user's
object), in one Redis round trip; anything it cannot vouch for goes to Flask."""
from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
import redis as redis_lib
from flask_jwt_extended import create_access_token, create_refresh_token
from limits.storage import RedisStorage
from sqlalchemy import select

from models import Notification, User, db
from tests.support.assertions import error, ok
from tests.support.fast_apps import redis_app
from tests.support.queries import recorded_statements
from tests.test_catalog_fast_path import RoundTrips, flask_handled
from tests.support.learning import actor_in, add_certificate, build_course
from utils.extensions import limiter
from utils.helpers import utcnow
from utils.pipeline import blocked_ips, redis_client, shared_state
from utils.pipeline.fast_reads import ReadSession

API = "/api/v1"
STUDENTS = "https://students.example.test"
LIMIT = 4  # the default limit of every route here, a minute


@pytest.fixture
def fast_app(app):
    """An app with Redis for the shared state and the limits, a small default limit."""
    with redis_app(app, RATELIMIT_DEFAULT=f"{LIMIT} per minute",
                   FRONTEND_URL_STUDENTS=STUDENTS) as fast:
        # The limiter's counter script, as a Redis that has served a request holds it: on a
        # new server the first read's round trip finds it missing (NOSCRIPT), leaves the
        # count to the limiter, and so teaches the fast path nothing until the next read.
        redis_client.for_url(fast.config["REDIS_URL"]).script_load(
            RedisStorage.SCRIPT_INCR_EXPIRE)
        yield fast


class Learner:
    """A student enrolled in a course with a lesson done, a notification and a certificate."""

    def __init__(self, app, n: int = 1):
        client = app.test_client()
        # The course is built on an app without limits: only the reads below are counted.
        teacher = actor_in(app, "instructor", 100 + n)
        self.student = actor_in(app, "student", n)
        limiter.enabled = False
        try:
            self.course = build_course(client, teacher, f"Fast read course {n}",
                                       modules=(("L1", "L2"),))
            enrolled = ok(client.post(f"{API}/enrollments", json={"course_id": self.course.id},
                                      headers=self.student.headers), 201)["enrollment"]
            self.enrollment = enrolled["id"]
            ok(client.post(f"{API}/enrollments/{self.enrollment}/lessons/"
                           f"{self.course.lesson_ids[0]}/complete", headers=self.student.headers))
        finally:
            limiter.enabled = True
        add_certificate(app, self.student.id, self.course.id, self.enrollment)
        with app.app_context():
            db.session.add(Notification(user_id=self.student.id, title="Hello", message="Hi"))
            db.session.commit()
        store = redis_client.for_url(app.config["REDIS_URL"])
        counted = store.keys("LIMITS*")
        if counted:
            store.delete(*counted)

    def paths(self) -> list[str]:
        return [f"{API}/notifications/unread-count", f"{API}/notifications",
                f"{API}/notifications/get-notifications", f"{API}/users/dashboard",
                f"{API}/users/enrolled-courses", f"{API}/users/my-courses",
                f"{API}/users/certificates", f"{API}/enrollments/{self.enrollment}/progress",
                f"{API}/courses/{self.course.id}"]


def _without_own(headers) -> dict:
    return {name: value for name, value in headers.items() if name != "X-Request-ID"}


def _counter(app, path: str, ip: str = "127.0.0.1") -> int:
    """The default limit's count for `ip` on the route of `path`, as Flask-Limiter keeps it."""
    client = redis_client.for_url(app.config["REDIS_URL"])
    keys = [key for key in client.keys("LIMITS*") if f"/{ip}/".encode() in key]
    return sum(int(client.get(key) or 0) for key in keys)


def test_every_marked_read_is_in_the_byte_for_byte_comparison(app):
    """A view marked @signed_in_read whose reader reads `request` or `g` would silently always
    go to Flask; the comparison below catches that only for the paths it reads. Each GET rule
    of a marked view is among them, so a new marked route fails here until it is added."""
    adapter = app.url_map.bind("localhost")
    compared = {adapter.match(path, method="GET", return_rule=True)[0].rule
                for path in Learner.paths(SimpleNamespace(enrollment=1, course=SimpleNamespace(
                    id=1)))}
    marked = {rule.rule for rule in app.url_map.iter_rules()
              if "GET" in rule.methods
              and getattr(app.view_functions[rule.endpoint], "signed_in_reader", None)}
    assert marked, "no view is marked @signed_in_read"
    assert marked == compared, f"marked but not compared: {sorted(marked - compared)}; " \
                               f"compared but not marked: {sorted(compared - marked)}"


def test_each_learner_read_is_flasks_answer_without_flask(fast_app, monkeypatch):
    learner = Learner(fast_app)
    client = fast_app.test_client()
    headers = {**learner.student.headers, "Origin": STUDENTS}
    for n, path in enumerate(learner.paths()):
        sent = {"headers": headers, "environ_base": {"REMOTE_ADDR": f"198.51.100.{n + 1}"}}
        learned = client.get(path, **sent)  # Flask answers; the fast path learns
        assert learned.status_code == 200, (path, learned.get_json())
        trips = RoundTrips(monkeypatch)
        with recorded_statements(fast_app) as statements, flask_handled(fast_app) as handled:
            fast = client.get(path, environ_base=sent["environ_base"],
                              headers={**headers, "X-Request-ID": "trace-9"})
        monkeypatch.undo()
        assert handled == [], path  # Flask never saw it
        assert trips.count == 1, path  # the counters, the token's state, the address: one trip
        assert fast.status_code == 200 and fast.data == learned.data, path
        assert fast.headers["X-Request-ID"] == "trace-9"
        assert _without_own(fast.headers) == _without_own(learned.headers), path
        assert "Content-Security-Policy" in fast.headers
        assert fast.headers["Access-Control-Allow-Origin"] == STUDENTS
        assert all(s.lstrip().upper().startswith(("SELECT", "EXECUTE", "PREPARE"))
                   for s in statements), statements  # no transaction block, no write
        # Both requests were counted once each, as Flask alone counts them.
        assert _counter(fast_app, path, f"198.51.100.{n + 1}") == 2, path
        # The same request with the fast path off: Flask's own answer, header for header.
        fast_app.config["SIGNED_IN_FAST_PATH"] = False
        with flask_handled(fast_app) as handled:
            slow = client.get(path, **sent)
        fast_app.config["SIGNED_IN_FAST_PATH"] = True
        assert handled == [path]
        assert slow.data == fast.data and _without_own(slow.headers) == _without_own(fast.headers)


def _learned(app, learner: Learner, path: str) -> None:
    ok(app.test_client().get(path, headers=learner.student.headers))


def test_another_learner_gets_their_own_answer(fast_app):
    first, second = Learner(fast_app, 1), Learner(fast_app, 2)
    client = fast_app.test_client()
    path = f"{API}/users/enrolled-courses"
    _learned(fast_app, first, path)
    with flask_handled(fast_app) as handled:
        mine = ok(client.get(path, headers=first.student.headers))
        theirs = ok(client.get(path, headers=second.student.headers))
    assert handled == []
    assert [e["course_id"] for e in mine["enrollments"]] == [first.course.id]
    assert [e["course_id"] for e in theirs["enrollments"]] == [second.course.id]
    # Another learner's enrollment: the reader refuses, Flask answers its 404.
    progress = f"{API}/enrollments/{first.enrollment}/progress"
    _learned(fast_app, first, progress)
    with flask_handled(fast_app) as handled:
        error(client.get(progress, headers=second.student.headers), 404)
    assert handled == [progress]


def test_a_deleted_account_and_an_id_past_the_column_go_to_flask(fast_app):
    learner = Learner(fast_app)
    client = fast_app.test_client()
    headers = learner.student.headers
    progress = f"{API}/enrollments/{learner.enrollment}/progress"
    _learned(fast_app, learner, progress)
    with flask_handled(fast_app) as handled:
        error(client.get(f"{API}/enrollments/{2**31}/progress", headers=headers), 404)
        error(client.get(f"{API}/enrollments/{10**30}/progress", headers=headers), 404)
    assert len(handled) == 2
    # A stranger whose account was deleted after signing in: the mirror's tombstone.
    stranger = actor_in(fast_app, "student", 7)
    dashboard = f"{API}/users/dashboard"
    ok(client.get(dashboard, headers=stranger.headers))
    with fast_app.app_context():
        db.session.delete(db.session.get(User, stranger.id))
        db.session.commit()
    with flask_handled(fast_app) as handled:
        error(client.get(dashboard, headers=stranger.headers), 401, "token_invalid")
    assert handled == [dashboard]


def _token(app, user_id: int, refresh: bool = False,
           expires: timedelta | None = None) -> dict:
    """conftest's auth_headers for `app` (on SQLite, its in-memory database is its own)."""
    with app.app_context():
        user = db.session.get(User, user_id)
        kwargs = {"expires_delta": expires} if expires is not None else {}
        token = (create_refresh_token if refresh else create_access_token)(user, **kwargs)
    return {"Authorization": f"Bearer {token}"}


def test_every_refusal_is_flasks(fast_app):
    learner = Learner(fast_app)
    client = fast_app.test_client()
    path = f"{API}/users/dashboard"
    _learned(fast_app, learner, path)
    student = learner.student
    good = _token(fast_app, student.id)
    signature_flipped = good["Authorization"][:-2] + (
        "AA" if not good["Authorization"].endswith("AA") else "BB")
    cases = [
        ("expired", _token(fast_app, student.id, expires=timedelta(seconds=-5)), 401,
         "token_expired"),
        ("tampered", {"Authorization": signature_flipped}, 401, "token_invalid"),
        ("refresh token", _token(fast_app, student.id, refresh=True), 401, "token_invalid"),
        ("two tokens", {"Authorization": f"{good['Authorization']}, Bearer x.y.z"}, 401,
         "token_missing"),
        ("junk", {"Authorization": "Bearer \x00.a.b"}, 401, "token_invalid"),
    ]
    for n, (name, headers, status, code) in enumerate(cases):
        with flask_handled(fast_app) as handled:
            response = client.get(path, headers=headers,
                                  environ_base={"REMOTE_ADDR": f"203.0.113.{n + 1}"})
        assert handled == [path], name
        error(response, status, code)
    # Logged out (revoked), then a password change, then deactivated: each refused at once.
    revoked = _token(fast_app, student.id)
    ok(client.get(path, headers=revoked, environ_base={"REMOTE_ADDR": "203.0.113.20"}))
    ok(client.post(f"{API}/auth/logout", headers=revoked,
                   environ_base={"REMOTE_ADDR": "203.0.113.21"}))
    with flask_handled(fast_app) as handled:
        error(client.get(path, headers=revoked, environ_base={"REMOTE_ADDR": "203.0.113.22"}),
              401, "token_revoked")
    assert handled == [path]
    with fast_app.app_context():
        user = db.session.get(User, student.id)
        user.tokens_valid_after = utcnow() + timedelta(seconds=1)
        db.session.commit()
    with flask_handled(fast_app) as handled:
        error(client.get(path, headers=good, environ_base={"REMOTE_ADDR": "203.0.113.23"}), 401,
              "token_revoked")
    assert handled == [path]
    fresh = _token(fast_app, student.id)
    with fast_app.app_context():
        user = db.session.get(User, student.id)
        user.tokens_valid_after = None
        user.is_active = False
        db.session.commit()
    with flask_handled(fast_app) as handled:
        error(client.get(path, headers=fresh,
                         environ_base={"REMOTE_ADDR": "203.0.113.24"}), 401, "account_inactive")
    assert handled == [path]


def test_a_custom_token_verification_is_honoured(fast_app, monkeypatch):
    """A token_verification_loader the app registers runs here too (the default, which
    passes every token, is skipped)."""
    learner = Learner(fast_app)
    client = fast_app.test_client()
    path = f"{API}/users/certificates"
    _learned(fast_app, learner, path)
    with fast_app.app_context():
        manager = fast_app.extensions["flask-jwt-extended"]
    seen = []

    def refuse(header, claims):
        seen.append(claims["sub"])
        return False

    monkeypatch.setattr(manager, "_token_verification_callback", refuse)
    with flask_handled(fast_app) as handled:
        error(client.get(path, headers=learner.student.headers), 401, "token_invalid")
    assert handled == [path]
    assert seen == [str(learner.student.id)] * 2  # the fast path's check, then Flask's


def test_a_blocked_address_and_an_untrusted_mirror_go_to_flask(fast_app):
    learner = Learner(fast_app)
    client = fast_app.test_client()
    path = f"{API}/notifications/unread-count"
    _learned(fast_app, learner, path)
    headers = learner.student.headers
    with fast_app.app_context():
        blocked_ips.block_ip("203.0.113.77", seconds=300, reason="test")
    with flask_handled(fast_app) as handled:
        error(client.get(path, headers=headers, environ_base={"REMOTE_ADDR": "203.0.113.77"}),
              403, "ip_blocked")
    assert handled == [path]
    # Counted once, as Flask alone counts it (a default limit counts before the block is read):
    # the fast path's count was given back.
    assert _counter(fast_app, path, "203.0.113.77") == 1
    # The mirror not in sync (a Redis flush): Flask answers from the database, and syncs.
    redis_client.for_url(fast_app.config["REDIS_URL"]).delete(shared_state.SYNCED)
    with flask_handled(fast_app) as handled:
        assert ok(client.get(path, headers=headers,
                             environ_base={"REMOTE_ADDR": "203.0.113.78"}))["unread_count"] == 1
    assert handled == [path]


def test_a_query_is_read_as_flask_reads_it_and_a_refused_one_goes_to_flask(fast_app):
    learner = Learner(fast_app)
    client = fast_app.test_client()
    with fast_app.app_context():
        db.session.add_all(Notification(user_id=learner.student.id, title=f"Note {n}",
                                        message="Hi") for n in range(3))
        db.session.commit()
    headers = learner.student.headers
    path = f"{API}/notifications"
    _learned(fast_app, learner, path)
    for n, query in enumerate(("page=2&per_page=1", "unread=true&per_page=2", "per_page=3&x=y",
                               "unread=0", "per_page=100")):
        sent = {"headers": headers, "environ_base": {"REMOTE_ADDR": f"203.0.113.{90 + n}"}}
        with flask_handled(fast_app) as handled:
            fast = client.get(f"{path}?{query}", **sent)
        assert handled == [], query
        fast_app.config["SIGNED_IN_FAST_PATH"] = False
        slow = client.get(f"{path}?{query}", **sent)
        fast_app.config["SIGNED_IN_FAST_PATH"] = True
        assert fast.status_code == slow.status_code == 200 and fast.data == slow.data, query
    assert [n["title"] for n in ok(client.get(f"{path}?page=2&per_page=1",
                                              headers=headers))["notifications"]] == ["Note 1"]
    # What Flask refuses, Flask refuses (422), counted once as Flask counts it.
    refused = ("per_page=0", "page=-1", "unread=maybe", "per_page=1%00", "x=%07",
               "page=99999999999999999999", "page=1&page=2")
    for n, query in enumerate(refused):
        address = f"203.0.113.{110 + n}"
        with flask_handled(fast_app) as handled:
            error(client.get(f"{path}?{query}", headers=headers,
                             environ_base={"REMOTE_ADDR": address}), 422)
        assert handled == [path], query
        assert _counter(fast_app, path, address) == 1, query
    # A view without a query model ignores a query, as Flask does; a control character is
    # still Flask's 422.
    unread = f"{API}/notifications/unread-count"
    _learned(fast_app, learner, unread)
    with flask_handled(fast_app) as handled:
        assert ok(client.get(f"{unread}?a=b", headers=headers))["unread_count"] == 4
        error(client.get(f"{unread}?a=%00", headers=headers), 422)
    assert handled == [unread]


def test_a_mirror_value_that_is_not_one_is_read_from_the_row(fast_app):
    """A user key holding something else in the current generation (written by hand, by
    another program): neither path trusts it, neither answers 500; Flask reads the row, and
    the request is counted once."""
    learner = Learner(fast_app)
    client = fast_app.test_client()
    path = f"{API}/users/dashboard"
    _learned(fast_app, learner, path)
    store = redis_client.for_url(fast_app.config["REDIS_URL"])
    generation = store.get(shared_state.SYNCED)
    for junk in (b"student|1", b"\xff\xfe|1|", b"student|1|soon"):
        store.set(shared_state.user_key(learner.student.id), generation + b"|" + junk)
        with flask_handled(fast_app) as handled:
            body = ok(client.get(path, headers=learner.student.headers,
                                 environ_base={"REMOTE_ADDR": "192.0.2.50"}))
        assert handled == [path] and body["stats"]["enrolled_courses"] == 1
    assert _counter(fast_app, path, "192.0.2.50") == 3


def test_the_limit_is_counted_once_and_breached_as_flask_breaches_it(fast_app):
    learner = Learner(fast_app)
    client = fast_app.test_client()
    path = f"{API}/users/certificates"
    sent = {"headers": learner.student.headers, "environ_base": {"REMOTE_ADDR": "192.0.2.9"}}
    with flask_handled(fast_app) as handled:
        for _ in range(LIMIT):
            ok(client.get(path, **sent))
        assert _counter(fast_app, path, "192.0.2.9") == LIMIT
        refused = client.get(path, **sent)
    assert handled == [path, path]  # the first taught the fast path; the 429 is Flask's
    error(refused, 429)
    assert int(refused.headers["Retry-After"]) > 0
    # A default limit is checked in the limiter's before_request: its 429 is still traced.
    assert len(refused.headers["X-Request-ID"]) == 32
    assert _counter(fast_app, path, "192.0.2.9") == LIMIT + 1  # as Flask alone leaves it


def test_redis_down_goes_to_flask(fast_app, monkeypatch):
    learner = Learner(fast_app)
    client = fast_app.test_client()
    path = f"{API}/users/dashboard"
    _learned(fast_app, learner, path)

    def down(*_args, **_kwargs):
        raise redis_lib.exceptions.ConnectionError("Redis is down")

    monkeypatch.setattr(redis_lib.connection.AbstractConnection, "send_packed_command", down)
    with flask_handled(fast_app) as handled:
        body = ok(client.get(path, headers=learner.student.headers))
    assert handled == [path]
    assert body["stats"]["enrolled_courses"] == 1


def test_a_readers_session_is_one_connection_and_a_real_session_on_demand(fast_app):
    """ReadSession: `connection()` is one engine connection for the whole read; an ORM call
    goes to a real session made then; closing it (the app context's teardown) closes both."""
    learner = Learner(fast_app)
    with fast_app.app_context():
        read = ReadSession(db.session.session_factory, db.engine)
        first = read.connection()
        assert read.connection() is first
        assert first.scalar(select(User.email).where(User.id == learner.student.id)) == \
            "race-student1@example.com"
        assert read._session is None  # no ORM session yet
        assert read.get(User, learner.student.id).id == learner.student.id
        session = read._session
        assert session is not None and read.connection({"mapper": User}) is not first
        read.close()
        assert first.closed and not session.in_transaction()
