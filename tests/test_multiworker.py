"""Shared state holds across gunicorn workers: a revoked token, a locked account and a rate
limit are refused by every worker, not only by the one that recorded them; a course's outline
that each worker keeps under the catalog version shows a change made through either at once.

gunicorn runs the production configuration with two sync workers on a scratch PostgreSQL
database (schema from `flask db upgrade`) and a Redis database of its own. Each request goes on
a new connection with its own X-Request-ID; the app's JSON request log carries the pid of the
worker that answered, and each scenario asserts that both workers answered.
"""
from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from config import normalise_database_url
from tests.conftest import postgres_url, redis_url, require_service
from tests.support.gunicorn_server import GunicornServer, production_env, run_flask

API = "/api/v1"
PASSWORD = "Multi-w0rker-pass"
RESET_LIMIT = 6  # RATE_LIMIT_PASSWORD_RESET_REQUEST, per minute
PUBLIC_LIMIT = 12  # RATE_LIMIT_PUBLIC, per minute
READ_LIMIT = 150  # RATELIMIT_DEFAULT, per minute: every route without its own limit
MAX_ROUNDS = 5  # batches sent, at most, until both workers have answered


def _own_redis_db(url: str) -> str:
    """The suite's Redis URL pointed at a database number of our own (14, or 13 if the suite
    already uses 14), so flushing it never touches the suite's data."""
    parts = urlsplit(url)
    suite_db = parts.path.strip("/") or "0"
    ours = "13" if suite_db == "14" else "14"
    return urlunsplit(parts._replace(path=f"/{ours}"))


@pytest.fixture(scope="module")
def scratch_database():
    url = make_url(normalise_database_url(
        require_service("PostgreSQL (TEST_POSTGRES_URL)", postgres_url())))
    name = f"lms_multiworker_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def scratch_redis():
    url = _own_redis_db(require_service("Redis (TEST_REDIS_URL)", redis_url()))
    client = redis.Redis.from_url(url, socket_timeout=5)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="module")
def server(scratch_database, scratch_redis, tmp_path_factory):
    env = production_env(
        scratch_database, scratch_redis,
        # Generous where a scenario is not about the limit, so only the tested limit bites.
        RATE_LIMIT_REGISTER="100 per minute",
        RATE_LIMIT_LOGIN="1000 per minute",
        RATE_LIMIT_PASSWORD_RESET_REQUEST=f"{RESET_LIMIT} per minute",
        RATE_LIMIT_PUBLIC=f"{PUBLIC_LIMIT} per minute",
        RATELIMIT_DEFAULT=f"{READ_LIMIT} per minute",
        # A proxy is configured, but these requests come straight from 127.0.0.1: their own
        # forwarded headers must be ignored by gunicorn and the app alike.
        TRUSTED_PROXIES="192.0.2.0/24",
    )
    run_flask(env, "db", "upgrade")
    gunicorn = GunicornServer(env, tmp_path_factory.mktemp("gunicorn") / "gunicorn.log",
                              workers=2)
    gunicorn.start(ready_timeout=30)
    try:
        assert len(gunicorn.worker_pids) == 2, gunicorn.log_tail()
        yield gunicorn
    finally:
        gunicorn.stop()


def _send_until_both_workers(server, count, method, path, **kwargs):
    """Batches of `count` requests until both workers have answered (or MAX_ROUNDS)."""
    answers = []
    for _ in range(MAX_ROUNDS):
        answers += server.send_many(count, method, path, **kwargs)
        if {a.pid for a in answers} >= server.worker_pids:
            break
    return answers


def _assert_both_workers(server, answers):
    pids = {a.pid for a in answers}
    assert pids == server.worker_pids, (
        f"answers came from pids {sorted(pids)}, workers are {sorted(server.worker_pids)}")


def _assert_error(answer, status, code):
    assert answer.status == status, (answer.status, answer.body)
    assert isinstance(answer.body, dict), answer.body
    assert answer.body["code"] == code, answer.body
    assert isinstance(answer.body["error"], str) and answer.body["error"], answer.body
    assert set(answer.body) <= {"error", "code", "details"}, answer.body


def _assert_retry_after(answer):
    retry_after = answer.headers.get("Retry-After")
    assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1, (
        answer.headers)


def _register(server, email):
    answer = server.send("POST", f"{API}/auth/register", json={
        "email": email, "password": PASSWORD, "first_name": "Multi", "last_name": "Worker"})
    assert answer.status == 201, answer.body


def _login(server, email, password=PASSWORD):
    return server.send("POST", f"{API}/auth/login", json={"email": email, "password": password})


def _bearer(server, who: str) -> dict:
    """The Authorization header of a new account, registered and signed in."""
    email = f"{who}-{uuid.uuid4().hex[:8]}@example.com"
    _register(server, email)
    login = _login(server, email)
    assert login.status == 200, login.body
    return {"Authorization": f"Bearer {login.body['access_token']}"}


def test_revoked_token_is_refused_by_every_worker(server):
    email = f"revoked-{uuid.uuid4().hex[:8]}@example.com"
    _register(server, email)
    login = _login(server, email)
    assert login.status == 200, login.body
    access, refresh = login.body["access_token"], login.body["refresh_token"]
    bearer = {"Authorization": f"Bearer {access}"}

    # The token works on both workers before the logout ...
    before = _send_until_both_workers(server, 10, "GET", f"{API}/auth/profile", headers=bearer,
                                      tag="profile-before")
    assert all(a.status == 200 and a.body["user"]["email"] == email for a in before), [
        (a.status, a.body) for a in before]
    _assert_both_workers(server, before)

    logout = server.send("POST", f"{API}/auth/logout", headers=bearer,
                         json={"refresh_token": refresh})
    assert logout.status == 200, logout.body

    # ... and on neither after it, whichever worker took the logout.
    after = _send_until_both_workers(server, 20, "GET", f"{API}/auth/profile", headers=bearer,
                                     tag="profile-after")
    for answer in after:
        _assert_error(answer, 401, "token_revoked")
    _assert_both_workers(server, after)


def test_locked_account_is_refused_by_every_worker(server):
    email = f"locked-{uuid.uuid4().hex[:8]}@example.com"
    _register(server, email)

    # LOGIN_MAX_FAILURES (5) wrong passwords in a row: four refusals, then the lock.
    failures = [_login(server, email, "Wrong-passw0rd") for _ in range(5)]
    for answer in failures[:4]:
        _assert_error(answer, 401, "invalid_credentials")
    _assert_error(failures[4], 423, "account_locked")
    _assert_retry_after(failures[4])

    # The right password no longer opens the account, on either worker.
    locked = _send_until_both_workers(server, 20, "POST", f"{API}/auth/login",
                                      json={"email": email, "password": PASSWORD}, tag="locked")
    for answer in locked:
        _assert_error(answer, 423, "account_locked")
        _assert_retry_after(answer)
        assert "access_token" not in answer.body
    _assert_both_workers(server, locked)


def test_rate_limit_is_shared_by_every_worker(server):
    # Two workers each counting on their own would let up to twice the limit through.
    path = f"{API}/auth/password-reset/request"
    body = {"email": "nobody@example.com"}
    count = RESET_LIMIT * 5
    answers = server.send_many(count, "POST", path, json=body, tag="reset")
    passed = [a for a in answers if a.status == 200]
    assert len(passed) == RESET_LIMIT, [(a.status, a.body, a.pid) for a in answers]
    # The window is a minute: whatever follows is refused too, until both workers have refused.
    refused = [a for a in answers if a.status != 200]
    for _ in range(MAX_ROUNDS):
        if {a.pid for a in refused} >= server.worker_pids:
            break
        refused += server.send_many(RESET_LIMIT, "POST", path, json=body, tag="reset-more")
    assert len(refused) >= count - RESET_LIMIT
    # A client straight at gunicorn that claims to be someone else is refused all the same.
    for n in range(4):
        refused += server.send_many(1, "POST", path, json=body, tag="reset-forged", headers={
            "X-Forwarded-For": f"203.0.113.{n + 1}", "Forwarded": f"for=203.0.113.{n + 1}"})
    for answer in refused:
        _assert_error(answer, 429, "rate_limited")
        _assert_retry_after(answer)
    # Each worker refused once the shared count was spent, also one that let none through.
    _assert_both_workers(server, refused)


def test_a_signed_in_read_limit_is_shared_by_every_worker(server):
    """A signed-in read with room is counted and allowed by its one Redis round trip, without
    Flask-Limiter evaluating it (utils/pipeline/round_trip.py), on whichever worker takes it:
    across both, exactly the limit gets through, and the rest is refused as before."""
    bearer = _bearer(server, "reader")
    path = f"{API}/public/get-courses?per_page=5"
    answers = server.send_many(PUBLIC_LIMIT * 3, "GET", path, headers=bearer, tag="signed-in")
    passed = [a for a in answers if a.status == 200]
    assert len(passed) == PUBLIC_LIMIT, [(a.status, a.pid) for a in answers]
    assert all(isinstance(a.body, dict) and a.body["courses"] == [] for a in passed)
    refused = [a for a in answers if a.status != 200]
    for _ in range(MAX_ROUNDS):
        if {a.pid for a in refused} >= server.worker_pids:
            break
        refused += server.send_many(4, "GET", path, headers=bearer, tag="signed-in-more")
    for answer in refused:
        _assert_error(answer, 429, "rate_limited")
        _assert_retry_after(answer)
    _assert_both_workers(server, answers)
    _assert_both_workers(server, refused)


def test_a_learners_read_before_flask_holds_on_every_worker(server):
    """The signed-in fast path (utils/pipeline/signed_in_fast_path.py) answers a learner's read
    once its worker has seen Flask answer one: across both workers exactly the default limit
    gets through, the rest is refused with Flask's 429, and a logout is honoured by both."""
    bearer = _bearer(server, "learner")
    path = f"{API}/notifications/unread-count"
    answers = server.send_many(READ_LIMIT + 30, "GET", path, headers=bearer, tag="learner")
    passed = [a for a in answers if a.status == 200]
    assert len(passed) == READ_LIMIT, [(a.status, a.pid) for a in answers]
    assert all(a.body == {"unread_count": 0} for a in passed)
    _assert_both_workers(server, passed)
    for answer in answers:
        if answer.status != 200:
            _assert_error(answer, 429, "rate_limited")
            _assert_retry_after(answer)
    # A new window's worth on another route, then the token is revoked: both workers, which
    # have both learned the route, refuse it at once.
    dashboard = f"{API}/users/dashboard"
    before = _send_until_both_workers(server, 10, "GET", dashboard, headers=bearer,
                                      tag="learner-dashboard")
    assert all(a.status == 200 and a.body["stats"]["enrolled_courses"] == 0 for a in before)
    _assert_both_workers(server, before)
    logout = server.send("POST", f"{API}/auth/logout", headers=bearer)
    assert logout.status == 200, logout.body
    after = _send_until_both_workers(server, 10, "GET", dashboard, headers=bearer,
                                     tag="learner-after")
    for answer in after:
        _assert_error(answer, 401, "token_revoked")
    _assert_both_workers(server, after)


def test_forwarded_headers_straight_at_gunicorn_are_not_believed(server):
    """Neither gunicorn (forwarded_allow_ips) nor the app believes them from a peer outside
    TRUSTED_PROXIES: the request log has the socket's address, a junk address is no 500, and
    X-Forwarded-Proto does not make the app think the request came over HTTPS."""
    junk = server.send("GET", f"{API}/health", tag="xff-junk",
                       headers={"X-Forwarded-For": "A" * 60})
    forged = server.send("GET", f"{API}/health", tag="xff-forged", headers={
        "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example", "X-Forwarded-Ssl": "on"})
    assert junk.status == 200 and forged.status == 200, (junk.body, forged.body)
    log = server.request_log()
    for answer in (junk, forged):
        assert log[answer.request_id]["remote_addr"] == "127.0.0.1", log[answer.request_id]
    # Plain HTTP stays plain HTTP: no HSTS for a request gunicorn was told is HTTPS.
    assert "Strict-Transport-Security" not in forged.headers


def _instructor_bearer(server, database_url: str) -> dict:
    """A new account made an instructor in the database (as an admin would), then signed in."""
    email = f"teacher-{uuid.uuid4().hex[:8]}@example.com"
    _register(server, email)
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE users SET role = 'instructor' WHERE email = :email"),
                         {"email": email})
    finally:
        engine.dispose()
    login = _login(server, email)
    assert login.status == 200, login.body
    return {"Authorization": f"Bearer {login.body['access_token']}"}


def _created(answer, status: int = 201) -> dict:
    assert answer.status == status, answer.body
    return answer.body


def test_an_outline_change_shows_on_every_worker_at_once(server, scratch_database):
    """Each worker keeps a course's outline under the catalog version its request read
    (services/course_service `_kept_outline`): a lesson added through either worker shows on
    the next page from both, and so does a lesson the learner completed (read fresh)."""
    teacher = _instructor_bearer(server, scratch_database)
    learner = _bearer(server, "outline-learner")
    course = _created(server.send("POST", f"{API}/courses", json={"title": "Kept outline"},
                                  headers=teacher))["course"]["id"]
    module = _created(server.send("POST", f"{API}/courses/{course}/modules",
                                  json={"title": "Only module"}, headers=teacher))["module"]["id"]
    first = _created(server.send("POST", f"{API}/lessons/create-lessons/{module}",
                                 json={"title": "L1", "content": "One"},
                                 headers=teacher))["lesson"]["id"]
    published = server.send("PUT", f"{API}/courses/{course}", json={"status": "published"},
                            headers=teacher)
    assert published.status == 200, published.body
    enrollment = _created(server.send("POST", f"{API}/enrollments", json={"course_id": course},
                                      headers=learner))["enrollment"]["id"]
    page = f"{API}/courses/{course}"

    def lessons(answer):
        assert answer.status == 200, answer.body
        return [(lesson["title"], lesson["completed"])
                for module in answer.body["course"]["modules"] for lesson in module["lessons"]]

    # Both workers read the outline, keep it, and learn the route (the fast path).
    before = _send_until_both_workers(server, 8, "GET", page, headers=learner,
                                      tag="outline-before")
    _assert_both_workers(server, before)
    assert {tuple(lessons(a)) for a in before} == {(("L1", False),)}
    _created(server.send("POST", f"{API}/lessons/create-lessons/{module}",
                         json={"title": "L2", "content": "Two"}, headers=teacher))
    done = server.send("POST", f"{API}/enrollments/{enrollment}/lessons/{first}/complete",
                       headers=learner)
    assert done.status == 200, done.body
    after = _send_until_both_workers(server, 8, "GET", page, headers=learner,
                                     tag="outline-after")
    _assert_both_workers(server, after)
    assert {tuple(lessons(a)) for a in after} == {(("L1", True), ("L2", False))}
