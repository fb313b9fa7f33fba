"""Two hosts behind a load balancer agree: sessions, revocations, lockouts, rate limits, webhook
idempotency and the catalog cache hold whichever host a request reaches.

Two separate gunicorn masters (tests/support/gunicorn_server.py), "host A" and "host B", each
with two sync workers on a port of its own, run the production configuration from one
environment (the same SESSION_SECRET and JWT_SECRET_KEY, as hosts behind a balancer share) on
one scratch PostgreSQL database (schema from `flask db upgrade`) and one Redis database of this
module's own (12, or 11 if the suite uses 12; tests/test_multiworker.py uses 14 or 13).
RAZORPAY_* point at the Razorpay stand-in running in this process (tests/support/razorpay_stub.py).

Each scenario does one thing on one host and checks it on the other; every answer is checked
for the host that gave it (the pid in the app's request log is one of that master's workers),
its status and its body, and the outcome is read straight from the scratch database and Redis.
"""
from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import jwt
import pytest
import redis
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session

from config import normalise_database_url
from models import Course, Enrollment, Payment, RevokedToken, User, WebhookEvent
from tests.support.concurrency import all_at_once
from tests.support.gunicorn_server import Answer, GunicornServer, production_env, run_flask
from tests.support.razorpay_stub import KEY_ID, KEY_SECRET, WEBHOOK_SECRET, RazorpayStub
from tests.support.scratch_services import (
    flushed_redis,
    own_redis_url,
    scratch_postgres,
)
from utils.helpers import utcnow
from utils.pipeline import catalog_cache

API = "/api/v1"
PROFILE = f"{API}/auth/profile"
PASSWORD = "Two-h0sts-pass"
WORKERS = 2  # per host
RESET_LIMIT = 4  # RATE_LIMIT_PASSWORD_RESET_REQUEST, per minute
LOCKOUT_SECONDS = 1800  # LOGIN_LOCKOUT_SECONDS (the default, named so the test can check it)
CACHE_SECONDS = 300  # CATALOG_CACHE_SECONDS: long enough never to run out during the module
PRICE = Decimal("499.00")
MINOR = 49900


# --- the two hosts ----------------------------------------------------------------------------

@dataclass
class Host:
    name: str
    server: GunicornServer

    def send(self, method: str, path: str, **kwargs) -> Answer:
        """One request to this host; checks that one of this host's workers answered it."""
        answer = self.server.send(method, path, tag=f"host-{self.name}", **kwargs)
        self.server.attribute([answer])
        assert answer.pid in self.server.worker_pids, (
            f"{answer.request_id} was answered by pid {answer.pid}, not by host {self.name} "
            f"(workers {sorted(self.server.worker_pids)})")
        return answer


@pytest.fixture(scope="module")
def scratch_database():
    with scratch_postgres("lms_two_hosts") as url:
        yield url


@pytest.fixture(scope="module")
def scratch_redis():
    with flushed_redis(own_redis_url(12, 11)) as url:
        yield url


@pytest.fixture(scope="module")
def stub():
    with RazorpayStub(KEY_ID, KEY_SECRET, WEBHOOK_SECRET) as server:
        yield server


@pytest.fixture(scope="module")
def hosts(scratch_database, scratch_redis, stub, tmp_path_factory):
    # One environment for both: what two hosts behind one balancer are deployed with.
    env = production_env(
        scratch_database, scratch_redis,
        RAZORPAY_KEY_ID=KEY_ID,
        RAZORPAY_KEY_SECRET=KEY_SECRET,
        RAZORPAY_WEBHOOK_SECRET=WEBHOOK_SECRET,
        RAZORPAY_API_BASE=stub.url,
        LOGIN_MAX_FAILURES="5",
        LOGIN_LOCKOUT_SECONDS=str(LOCKOUT_SECONDS),
        CATALOG_CACHE_SECONDS=str(CACHE_SECONDS),
        # Generous where a scenario is not about the limit, so only the tested limit bites.
        RATE_LIMIT_REGISTER="100 per minute",
        RATE_LIMIT_LOGIN="1000 per minute",
        RATE_LIMIT_REFRESH="1000 per minute",
        RATE_LIMIT_PUBLIC="1000 per minute",
        RATE_LIMIT_PAYMENT_CREATE="100 per minute",
        IP_BLOCK_MAX_ACCOUNTS="100",
        # The hash cost is not under test: ~20 checks at the default Argon2id cost (19 MiB,
        # t = 2) would add CPU to a module that must stay short.
        ARGON2_MEMORY_KIB="1024",
        ARGON2_TIME_COST="1",
        RATE_LIMIT_PASSWORD_RESET_REQUEST=f"{RESET_LIMIT} per minute",
    )
    run_flask(env, "db", "upgrade")  # before either host boots, as a deployment would
    logs = tmp_path_factory.mktemp("two_hosts")
    servers = [GunicornServer(env, logs / f"host_{name}.log", workers=WORKERS)
               for name in ("a", "b")]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:  # the two masters boot side by side
            for future in [pool.submit(s.start, ready_timeout=40) for s in servers]:
                future.result()
        a, b = (Host(name, server) for name, server in zip("AB", servers))
        for host in (a, b):
            assert len(host.server.worker_pids) == WORKERS, host.server.log_tail()
        assert a.server.port != b.server.port
        assert not a.server.worker_pids & b.server.worker_pids
        yield a, b
    finally:
        with ThreadPoolExecutor(max_workers=2) as pool:  # each takes ~2 s to stop gracefully
            list(pool.map(GunicornServer.stop, servers))


@pytest.fixture(scope="module")
def database(scratch_database):
    """The scratch database itself, for reading (and, once, writing past) what the hosts did."""
    engine = create_engine(normalise_database_url(scratch_database))
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def shared_redis(scratch_redis):
    client = redis.Redis.from_url(scratch_redis, socket_timeout=5, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="module")
def instructor(hosts):
    """An instructor registered on host A: (user id, bearer headers)."""
    a, _ = hosts
    email = _email("teacher")
    user = _register(a, email, role="instructor")
    login = _login(a, email)
    assert login.status == 200, login.body
    return user["id"], _bearer(login.body["access_token"])


# --- helpers ----------------------------------------------------------------------------------

def _email(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}@example.com"


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def _assert_error(answer: Answer, status: int, code: str) -> None:
    assert answer.status == status, (answer.status, answer.body)
    assert isinstance(answer.body, dict), answer.body
    assert answer.body["code"] == code, answer.body
    assert isinstance(answer.body["error"], str) and answer.body["error"], answer.body
    assert set(answer.body) <= {"error", "code", "details"}, answer.body


def _assert_retry_after(answer: Answer, most: int | None = None) -> int:
    value = answer.headers.get("Retry-After", "")
    assert value.isdigit() and int(value) >= 1, answer.headers
    if most is not None:
        assert int(value) <= most, answer.headers
    return int(value)


def _register(host: Host, email: str, role: str = "student") -> dict:
    answer = host.send("POST", f"{API}/auth/register", json={
        "email": email, "password": PASSWORD, "first_name": "Two", "last_name": "Hosts",
        "role": role})
    assert answer.status == 201, answer.body
    user = answer.body["user"]
    assert user["email"] == email and user["role"] == role, user
    return user


def _login(host: Host, email: str, password: str = PASSWORD) -> Answer:
    answer = host.send("POST", f"{API}/auth/login", json={"email": email, "password": password})
    if answer.status == 200:
        assert answer.body["token_type"] == "Bearer", answer.body
        assert answer.body["user"]["email"] == email, answer.body
        assert answer.body["access_token"] and answer.body["refresh_token"], answer.body
    return answer


def _assert_profile(answer: Answer, user_id: int, email: str) -> dict:
    assert answer.status == 200, (answer.status, answer.body)
    user = answer.body["user"]
    assert user["id"] == user_id and user["email"] == email, user
    assert "password_hash" not in user, user
    return user


def _published_course(host: Host, bearer: dict, title: str, **fields) -> int:
    """A course with one module and one lesson, published, all through `host`'s API."""
    created = host.send("POST", f"{API}/courses", headers=bearer, json={"title": title, **fields})
    assert created.status == 201, created.body
    course = created.body["course"]
    assert course["title"] == title and course["status"] == "draft", course
    module = host.send("POST", f"{API}/courses/{course['id']}/modules", headers=bearer,
                       json={"title": "Module 1"})
    assert module.status == 201, module.body
    lesson = host.send("POST", f"{API}/lessons/create-lessons/{module.body['module']['id']}",
                       headers=bearer, json={"title": "Lesson 1", "content": "lesson body"})
    assert lesson.status == 201, lesson.body
    published = host.send("PUT", f"{API}/courses/{course['id']}", headers=bearer,
                          json={"status": "published"})
    assert published.status == 200, published.body
    assert published.body["course"]["status"] == "published", published.body
    return course["id"]


# --- 1. sessions ------------------------------------------------------------------------------

def test_a_session_from_either_host_is_accepted_on_the_other(hosts, database):
    a, b = hosts
    email = _email("session")
    user = _register(a, email)

    login_a = _login(a, email)
    assert login_a.status == 200, login_a.body
    assert login_a.body["user"]["id"] == user["id"]
    assert _claims(login_a.body["access_token"])["sub"] == str(user["id"])
    _assert_profile(b.send("GET", PROFILE, headers=_bearer(login_a.body["access_token"])),
                    user["id"], email)

    login_b = _login(b, email)
    assert login_b.status == 200, login_b.body
    _assert_profile(a.send("GET", PROFILE, headers=_bearer(login_b.body["access_token"])),
                    user["id"], email)

    # What the session changes on one host is what the other answers next.
    changed = a.send("PUT", PROFILE, headers=_bearer(login_b.body["access_token"]),
                     json={"first_name": "Changed", "city": "Pune"})
    assert changed.status == 200, changed.body
    assert changed.body["user"]["first_name"] == "Changed"
    seen = _assert_profile(b.send("GET", PROFILE, headers=_bearer(login_a.body["access_token"])),
                           user["id"], email)
    assert seen["first_name"] == "Changed" and seen["city"] == "Pune", seen

    with Session(database) as session:
        row = session.get(User, user["id"])
        assert (row.first_name, row.city) == ("Changed", "Pune")
        assert row.last_login_at is not None and row.failed_login_attempts == 0


# --- 2. revocation ----------------------------------------------------------------------------

def test_a_logout_or_password_change_on_one_host_holds_on_the_other(hosts, database,
                                                                    shared_redis):
    a, b = hosts
    email = _email("revoked")
    user = _register(b, email)
    login = _login(a, email)
    assert login.status == 200, login.body
    access, refresh = login.body["access_token"], login.body["refresh_token"]

    # Before the logout, host B honours both tokens host A issued.
    _assert_profile(b.send("GET", PROFILE, headers=_bearer(access)), user["id"], email)
    renewed = b.send("POST", f"{API}/auth/refresh", headers=_bearer(refresh))
    assert renewed.status == 200, renewed.body
    assert renewed.body["access_token"] and renewed.body["token_type"] == "Bearer"

    logout = a.send("POST", f"{API}/auth/logout", headers=_bearer(access),
                    json={"refresh_token": refresh})
    assert logout.status == 200, logout.body
    assert logout.body == {"message": "Logged out"}

    # After it, neither host accepts any token of the login: the pair the refresh rotated
    # to dies with it.
    renewed_access, renewed_refresh = (renewed.body["access_token"],
                                       renewed.body["refresh_token"])
    for host in (b, a):
        for token in (access, renewed_access):
            _assert_error(host.send("GET", PROFILE, headers=_bearer(token)), 401,
                          "token_revoked")
        for token in (refresh, renewed_refresh):
            _assert_error(host.send("POST", f"{API}/auth/refresh", headers=_bearer(token)),
                          401, "token_revoked")

    access_jti, refresh_jti = _claims(access)["jti"], _claims(refresh)["jti"]
    with Session(database) as session:
        rows = session.scalars(select(RevokedToken).where(
            RevokedToken.user_id == user["id"]).order_by(RevokedToken.id)).all()
        assert sorted((r.jti, r.token_type) for r in rows) == sorted(
            [(access_jti, "access"), (refresh_jti, "refresh"),
             (_claims(renewed_access)["jti"], "access"),
             (_claims(renewed_refresh)["jti"], "refresh")])
    # The per-request check reads the shared Redis copy, which expires with each token.
    for jti in (access_jti, refresh_jti):
        assert shared_redis.exists(f"lms:revoked-jti:{jti}") == 1
        assert shared_redis.ttl(f"lms:revoked-jti:{jti}") > 0

    # A password change on host B ends every earlier session, host A's included.
    earlier = _login(a, email)
    assert earlier.status == 200, earlier.body
    on_b = _login(b, email)
    assert on_b.status == 200, on_b.body
    new_password = "Two-h0sts-changed"
    changed = b.send("POST", f"{API}/auth/change-password",
                     headers=_bearer(on_b.body["access_token"]),
                     json={"current_password": PASSWORD, "new_password": new_password})
    assert changed.status == 200, changed.body
    assert changed.body["message"] == "Password changed" and changed.body["access_token"]
    for token in (earlier.body["access_token"], on_b.body["access_token"]):
        _assert_error(a.send("GET", PROFILE, headers=_bearer(token)), 401, "token_revoked")
    _assert_error(a.send("POST", f"{API}/auth/refresh",
                         headers=_bearer(earlier.body["refresh_token"])), 401, "token_revoked")
    _assert_profile(a.send("GET", PROFILE, headers=_bearer(changed.body["access_token"])),
                    user["id"], email)
    _assert_error(_login(a, email), 401, "invalid_credentials")
    assert _login(a, email, new_password).status == 200

    with Session(database) as session:
        row = session.get(User, user["id"])
        assert row.tokens_valid_after is not None
        assert row.check_password(new_password) and not row.check_password(PASSWORD)


# --- 3. lockouts ------------------------------------------------------------------------------

def test_failed_logins_on_both_hosts_count_toward_one_lockout(hosts, database):
    a, b = hosts
    email = _email("locked")
    user = _register(a, email)

    # LOGIN_MAX_FAILURES (5) wrong passwords, alternating hosts: four refusals ...
    for host in (a, b, a, b):
        _assert_error(_login(host, email, "Wrong-passw0rd"), 401, "invalid_credentials")
    with Session(database) as session:
        row = session.get(User, user["id"])
        assert row.failed_login_attempts == 4 and row.locked_until is None

    # ... and the fifth, on host A, locks the account.
    before = utcnow()
    fifth = _login(a, email, "Wrong-passw0rd")
    after = utcnow()
    _assert_error(fifth, 423, "account_locked")
    _assert_retry_after(fifth, most=LOCKOUT_SECONDS)
    with Session(database) as session:
        row = session.get(User, user["id"])
        assert row.failed_login_attempts == 0
        assert row.locked_until is not None
        lockout = timedelta(seconds=LOCKOUT_SECONDS)
        assert before + lockout <= row.locked_until <= after + lockout, row.locked_until
        assert fifth.body["details"]["locked_until"] == row.locked_until.isoformat(
            timespec="seconds")

    # The right password no longer opens the account on either host.
    for host in (b, a, b):
        answer = _login(host, email)
        _assert_error(answer, 423, "account_locked")
        _assert_retry_after(answer, most=LOCKOUT_SECONDS)
        assert answer.body["details"]["locked_until"] == fifth.body["details"]["locked_until"]
        assert "access_token" not in answer.body


# --- 4. rate limits ---------------------------------------------------------------------------

def test_a_rate_limit_is_counted_once_across_both_hosts(hosts, shared_redis):
    a, b = hosts
    path = f"{API}/auth/password-reset/request"
    body = {"email": "nobody@example.com"}

    # RESET_LIMIT requests split across the hosts spend the one shared allowance ...
    for n, host in enumerate([a, b] * (RESET_LIMIT // 2)):
        answer = host.send("POST", path, json=body)
        assert answer.status == 200, (host.name, answer.status, answer.body)
        assert answer.body == {
            "message": "If an account exists for this e-mail, a reset link has been sent"}
        assert answer.headers.get("X-RateLimit-Limit") == str(RESET_LIMIT), answer.headers
        assert answer.headers.get("X-RateLimit-Remaining") == str(RESET_LIMIT - 1 - n), (
            host.name, answer.headers)

    # ... so the next one is refused on either host (each alone has let through only half).
    for host in (a, b, b, a):
        answer = host.send("POST", path, json=body)
        _assert_error(answer, 429, "rate_limited")
        _assert_retry_after(answer, most=60)
        assert answer.headers.get("X-RateLimit-Remaining") == "0", answer.headers

    # One counter in the shared Redis, not one per host, holding every request of both hosts
    # (limits' fixed window counts the refused ones too).
    keys = shared_redis.keys("LIMITS:*auth.request_password_reset*")
    assert len(keys) == 1, shared_redis.keys("*")
    assert int(shared_redis.get(keys[0])) == 2 * RESET_LIMIT, keys


# --- 5. webhook idempotency -------------------------------------------------------------------

def test_the_same_webhook_on_both_hosts_settles_the_payment_once(hosts, stub, instructor,
                                                                 database):
    a, b = hosts
    _, teacher = instructor
    course_id = _published_course(a, teacher, f"Paid course {uuid.uuid4().hex[:6]}",
                                  price=str(PRICE), currency="INR")
    email = _email("buyer")
    student = _register(b, email)
    login = _login(b, email)
    assert login.status == 200, login.body
    buyer = _bearer(login.body["access_token"])

    created = a.send("POST", f"{API}/payments/razorpay/create-order", headers=buyer,
                     json={"course_id": course_id})
    assert created.status == 201, created.body
    order = created.body["order"]
    assert (order["amount"], order["currency"], order["key_id"]) == (MINOR, "INR", KEY_ID)
    assert order["order_id"] in stub.orders and order["reused"] is False
    with Session(database) as session:
        row = session.get(Payment, order["payment_id"])
        assert (row.status, row.gateway_order_id) == ("pending", order["order_id"])

    paid, _ = stub.pay(order["order_id"])
    hook_body, signature = stub.payment_event("payment.captured", paid)
    headers = {"Content-Type": "application/json", "X-Razorpay-Signature": signature,
               "X-Razorpay-Event-Id": "evt_two_hosts"}

    def deliver(host):
        return lambda: host.send("POST", f"{API}/payments/razorpay/webhook",
                                 data=hook_body.encode(), headers=headers)

    # The same delivery reaches both hosts (twice each) at the same moment ...
    answers = all_at_once([deliver(a), deliver(b), deliver(a), deliver(b)])
    assert [x.status for x in answers] == [200] * 4, [(x.status, x.body) for x in answers]
    fresh = [x.body for x in answers if x.body != {"received": True, "duplicate": True}]
    assert fresh == [{"received": True}], [x.body for x in answers]
    # ... and again later, on each: acknowledged, changing nothing.
    for host in (b, a):
        again = deliver(host)()
        assert again.status == 200 and again.body == {"received": True, "duplicate": True}, (
            again.status, again.body)

    with Session(database) as session:
        row = session.get(Payment, order["payment_id"])
        assert row.status == "completed" and row.gateway_payment_id == paid["id"]
        assert row.invoice_number and row.paid_at is not None
        assert row.amount == PRICE
        enrollments = session.execute(select(Enrollment.status, Enrollment.payment_id).where(
            Enrollment.user_id == student["id"], Enrollment.course_id == course_id)).all()
        assert [tuple(e) for e in enrollments] == [("active", row.id)]
        payments = session.scalars(select(Payment.status).where(
            Payment.user_id == student["id"])).all()
        assert payments == ["completed"]
        events = session.execute(select(WebhookEvent.gateway, WebhookEvent.event_id,
                                        WebhookEvent.status, WebhookEvent.payment_id)).all()
        # Recorded by what the signature covers, not the unsigned X-Razorpay-Event-Id.
        assert [tuple(e) for e in events] == [("razorpay", f"payment.captured:{paid['id']}",
                                               "processed", row.id)]
        invoice = row.invoice_number

    # Both hosts report the one settled payment.
    for host in (a, b):
        shown = host.send("GET", f"{API}/payments/{order['payment_id']}", headers=buyer)
        assert shown.status == 200, shown.body
        assert shown.body["payment"]["status"] == "completed", shown.body
        assert shown.body["payment"]["invoice_number"] == invoice, shown.body
    history = b.send("GET", f"{API}/payments/history", headers=buyer)
    assert history.status == 200, history.body
    assert [(p["id"], p["status"]) for p in history.body["payments"]] == [
        (order["payment_id"], "completed")]


# --- 6. the catalog cache ---------------------------------------------------------------------

def test_a_catalog_change_on_one_host_is_served_at_once_by_the_other(hosts, instructor, database,
                                                                     shared_redis):
    a, b = hosts
    _, teacher = instructor
    title = f"Cached course {uuid.uuid4().hex[:6]}"
    course_id = _published_course(a, teacher, title, short_description="First words")
    detail = f"{API}/public/courses/{course_id}"
    listing = f"{API}/public/get-courses?per_page=100"

    def listed_title(answer):
        assert answer.status == 200, answer.body
        return {c["id"]: c["title"] for c in answer.body["courses"]}.get(course_id)

    # Host B computes the guest answers and keeps them in the shared Redis.
    first = b.send("GET", detail)
    assert first.status == 200, first.body
    assert first.body["course"]["title"] == title
    assert first.body["course"]["short_description"] == "First words"
    old_etag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == f"public, max-age={CACHE_SECONDS}"
    assert listed_title(b.send("GET", listing)) == title
    version = int(shared_redis.get("lms:catalog:version") or 0)
    # One copy, stamped with the catalog version it was computed under.
    copy = shared_redis.get(f"{catalog_cache.ENTRY_PREFIX}{detail}?")
    assert copy is not None and copy.split("\n", 1)[0] == str(version), copy
    assert copy.split("\n", 2)[1] == old_etag, copy  # the tag kept with the copy

    # Host A validates host B's ETag (the same body has the same tag on every host).
    not_modified = a.send("GET", detail, headers={"If-None-Match": old_etag})
    assert not_modified.status == 304 and not_modified.body == "", not_modified.body
    assert not_modified.headers["ETag"] == old_etag

    # Both hosts answer from that one copy: a write that goes around the app (and so does not
    # bump the version) is not seen by either, though host A never computed the answer.
    with database.begin() as conn:
        conn.execute(update(Course).where(Course.id == course_id)
                     .values(short_description="Written around the app"))
    for host in (b, a):
        served = host.send("GET", detail)
        assert served.status == 200 and served.body == first.body, served.body
        assert served.headers["ETag"] == old_etag

    # An instructor's change through host A ...
    renamed = a.send("PUT", f"{API}/courses/{course_id}", headers=teacher,
                     json={"title": f"{title} renamed on A"})
    assert renamed.status == 200, renamed.body
    assert renamed.body["course"]["title"] == f"{title} renamed on A"
    assert int(shared_redis.get("lms:catalog:version")) > version

    # ... is what host B serves next, read afresh from the database.
    fresh = b.send("GET", detail)
    assert fresh.status == 200, fresh.body
    assert fresh.body["course"]["title"] == f"{title} renamed on A"
    assert fresh.body["course"]["short_description"] == "Written around the app"
    new_etag = fresh.headers["ETag"]
    assert new_etag != old_etag
    stale = b.send("GET", detail, headers={"If-None-Match": old_etag})
    assert stale.status == 200 and stale.body == fresh.body, (stale.status, stale.body)
    assert stale.headers["ETag"] == new_etag
    assert listed_title(b.send("GET", listing)) == f"{title} renamed on A"
    current = a.send("GET", detail, headers={"If-None-Match": new_etag})
    assert current.status == 304 and current.headers["ETag"] == new_etag

    with Session(database) as session:
        row = session.get(Course, course_id)
        assert (row.title, row.status) == (f"{title} renamed on A", "published")
