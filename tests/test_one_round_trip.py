"""A rate-limited request waits for Redis once (utils/pipeline/round_trip.py): the limiter's
counters travel with the shared state's MGET, and the limits stay exactly as strict (N allowed,
N+1 refused with Retry-After, headers on writes, the in-memory fallback with Redis down and the
recovery), while the shared-state checks (revoked token, blocked address, deactivated user)
still hold.

Needs Redis (skips without it, except under CI=true).
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time

import flask_limiter
import limits
import pytest
import redis as redis_lib
from limits.strategies import FixedWindowRateLimiter
from redis.connection import AbstractConnection

from app import create_app
from config import limiter_storage_uri
from models import User, db
from tests.conftest import redis_url, require_service
from utils.extensions import limiter
from utils.pipeline import blocked_ips, redis_client
from utils.pipeline.round_trip import RoundTripRedisStorage

API = "/api/v1"
UNREAD = f"{API}/notifications/unread-count"
CATALOG = f"{API}/public/get-courses?per_page=20"


@pytest.fixture(autouse=True)
def needs_redis():
    require_service("Redis (TEST_REDIS_URL)", redis_url())


@pytest.fixture
def trips(monkeypatch):
    """Counts the writes to any Redis connection of this process: one per round trip (a
    pipeline packs its commands into one write)."""
    sent: list[bytes] = []
    original = AbstractConnection.send_packed_command

    def send(self, command, check_health=True):
        sent.append(command if isinstance(command, bytes) else b"".join(command))
        return original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", send)
    return sent


def set_default_limit(app, value: str | None) -> None:
    """Every route without a limit of its own limited by `value` (as `make bench` runs), or
    none again. Flask-Limiter keeps its default limits across init_app: cleared by hand."""
    limiter.limit_manager.set_default_limits([])
    app.config["RATELIMIT_DEFAULT"] = value or ""
    limiter.init_app(app)


@pytest.fixture
def default_limit(app):
    yield lambda value: set_default_limit(app, value)
    set_default_limit(app, None)


def counter(app, key_part: str) -> int | None:
    """The value of the one fixed-window counter whose key contains `key_part`."""
    with app.app_context():
        client = redis_client.get()
        keys = [k for k in client.keys("LIMITS:*") if key_part.encode() in k]
        assert len(keys) <= 1, keys
        return int(client.get(keys[0])) if keys else None


def one_trip(client, path, headers, trips) -> int:
    """The round trips of one request after a warm-up (scripts loaded, pools connected)."""
    client.get(path, headers=headers)
    trips.clear()
    assert client.get(path, headers=headers).status_code == 200
    return len(trips)


def test_flask_limiter_is_the_version_round_trip_mirrors():
    """round_trip._planned repeats Flask-Limiter 4.1's own resolution and reads its private
    `_marked_for_limiting`: an upgrade must be re-read against it before this passes."""
    assert flask_limiter.__version__ == "4.1.1"
    assert limits.__version__ == "5.8.0"
    assert isinstance(limiter._marked_for_limiting, set)


def test_the_limiter_counts_through_the_round_trip_storage(app):
    assert app.config["RATELIMIT_STORAGE_URI"].startswith("lms+redis://")
    assert isinstance(limiter.storage, RoundTripRedisStorage)
    assert limiter_storage_uri("memory://") == "memory://"
    assert limiter_storage_uri("rediss://h:6380/0") == "lms+rediss://h:6380/0"


def test_a_limited_signed_in_read_and_a_guest_catalog_read_make_one_round_trip(
        app, client, make_user, auth_headers, default_limit, trips):
    student = auth_headers(make_user())
    assert client.get(UNREAD, headers=student).status_code == 200  # planned: nothing to count
    default_limit("1000 per minute")
    # The kept plan misses the new limit once (the limiter counts it itself), then has it.
    assert one_trip(client, UNREAD, student, trips) == 1
    assert b"MGET" in trips[0] and b"EVALSHA" in trips[0]
    assert counter(app, "unread_count") == 2
    # A decorated route (RATE_LIMIT_PUBLIC) and a guest's cached page: state, version, copy
    # and the limit's counter.
    assert one_trip(client, CATALOG, {}, trips) == 1
    assert b"lms:catalog:version" in trips[0] and b"EVALSHA" in trips[0]
    assert counter(app, "public.courses") == 2
    # Unlimited: the MGET alone.
    default_limit(None)
    assert one_trip(client, UNREAD, student, trips) == 1
    assert b"EVALSHA" not in trips[0]


def refused_with_retry_after(response, window: int = 60) -> None:
    assert response.status_code == 429, response.get_json()
    assert response.get_json()["code"] == "rate_limited"
    assert 1 <= int(response.headers["Retry-After"]) <= window


def test_a_decorated_limit_refuses_at_exactly_the_same_count(app, client, monkeypatch):
    monkeypatch.setitem(app.config, "RATE_LIMIT_PUBLIC", "3 per minute")
    assert [client.get(CATALOG).status_code for _ in range(3)] == [200] * 3
    refused_with_retry_after(client.get(CATALOG))
    assert counter(app, "public.courses") == 4  # counted once a request, as limits alone counts
    # Another address has its own window.
    assert client.get(CATALOG, environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code == 200


def test_a_default_limit_refuses_at_exactly_the_same_count(
        app, client, make_user, auth_headers, default_limit):
    student = auth_headers(make_user())
    default_limit("3 per minute")
    assert [client.get(UNREAD, headers=student).status_code for _ in range(3)] == [200] * 3
    refused_with_retry_after(client.get(UNREAD, headers=student))
    assert counter(app, "unread_count") == 4


def test_a_limit_changed_at_run_time_is_followed_from_the_next_request(
        app, client, monkeypatch, trips):
    monkeypatch.setitem(app.config, "RATE_LIMIT_PUBLIC", "5 per minute")
    assert one_trip(client, CATALOG, {}, trips) == 1
    monkeypatch.setitem(app.config, "RATE_LIMIT_PUBLIC", "2 per minute")
    # The kept plan still names the old limit: the limiter counts the new one itself, the old
    # one's count is given back, and the plan is resolved again.
    assert [client.get(CATALOG).status_code for _ in range(3)] == [200, 200, 429]
    assert counter(app, "public.courses/5/") == 2
    assert counter(app, "public.courses/2/") == 3
    trips.clear()
    assert client.get(CATALOG, environ_base={"REMOTE_ADDR": "198.51.100.8"}).status_code == 200
    assert len(trips) == 1


def test_limited_writes_say_what_is_left_then_refuse(app, client):
    limit = int(app.config["RATE_LIMIT_PASSWORD_RESET_REQUEST"].split()[0])
    for left in range(limit - 1, -1, -1):
        response = client.post(f"{API}/auth/forgot-password", json={"email": "a@example.com"})
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == str(limit)
        assert response.headers["X-RateLimit-Remaining"] == str(left)
    refused_with_retry_after(
        client.post(f"{API}/auth/forgot-password", json={"email": "a@example.com"}), 3600)


def test_a_limited_write_says_what_is_left_from_its_one_round_trip(
        app, client, make_user, auth_headers, default_limit, trips):
    """The X-RateLimit-* headers of a write come from the counter's count and TTL asked in
    the request's one pipeline, not from two more round trips after the view."""
    student = auth_headers(make_user())
    default_limit("5 per minute")
    read_all = f"{API}/notifications/read-all"
    first = client.put(read_all, headers=student)  # the plan misses the new limit once
    assert first.status_code == 200 and first.headers["X-RateLimit-Remaining"] == "4"
    for left in (3, 2, 1, 0):
        trips.clear()
        started = time.time()
        response = client.put(read_all, headers=student)
        assert response.status_code == 200, response.get_json()
        assert len(trips) == 1 and b"EVALSHA" in trips[0] and b"TTL" in trips[0]
        assert response.headers["X-RateLimit-Limit"] == "5"
        assert response.headers["X-RateLimit-Remaining"] == str(left)
        # The window opened by the first write ends within the minute (limits' reset + 1).
        assert started < int(response.headers["X-RateLimit-Reset"]) <= started + 62
        assert counter(app, "mark_all_read") == 5 - left
    refused_with_retry_after(client.put(read_all, headers=student))
    # A read (its own window) still asks no TTL.
    client.get(UNREAD, headers=student)
    trips.clear()
    assert client.get(UNREAD, headers=student).status_code == 200
    assert len(trips) == 1 and b"EVALSHA" in trips[0] and b"TTL" not in trips[0]


def test_a_blocked_address_is_refused_and_its_count_given_back(app, client, monkeypatch):
    monkeypatch.setitem(app.config, "RATE_LIMIT_PUBLIC", "2 per minute")
    address = {"REMOTE_ADDR": "203.0.113.9"}
    assert client.get(CATALOG, environ_base=address).status_code == 200
    with app.app_context():
        blocked_ips.block_ip("203.0.113.9", seconds=600, reason="test")
        db.session.commit()
    for _ in range(3):
        response = client.get(CATALOG, environ_base=address)
        assert response.status_code == 403, response.get_json()
    # The decorated limit never ran for the 403s: its count is the one request that reached it.
    assert counter(app, "public.courses") == 1


def test_revoked_tokens_and_deactivated_users_still_refused(
        app, client, make_user, auth_headers, default_limit):
    default_limit("1000 per minute")
    revoked = make_user()
    tokens = client.post(f"{API}/auth/login", json={"email": email_of(app, revoked),
                                                    "password": "Passw0rd!"}).get_json()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert client.get(UNREAD, headers=bearer).status_code == 200
    assert client.post(f"{API}/auth/logout", headers=bearer,
                       json={"refresh_token": tokens["refresh_token"]}).status_code == 200
    response = client.get(UNREAD, headers=bearer)
    assert response.status_code == 401 and response.get_json()["code"] == "token_revoked"

    deactivated = make_user()
    headers = auth_headers(deactivated)
    assert client.get(UNREAD, headers=headers).status_code == 200
    with app.app_context():
        db.session.get(User, deactivated).is_active = False
        db.session.commit()  # published to the mirror after the commit
    assert client.get(UNREAD, headers=headers).status_code in (401, 403)


def email_of(app, user_id: int) -> str:
    with app.app_context():
        return db.session.get(User, user_id).email


# --- Redis stopping and coming back -----------------------------------------------------------

class RedisServer:
    """A redis-server of this test's own on a fixed port, to stop and start again."""

    def __init__(self, binary: str, directory) -> None:
        self.binary, self.directory = binary, directory
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def restartable(app, tmp_path):
    binary = require_service("redis-server (for the fault tests)", shutil.which("redis-server"))
    server = RedisServer(binary, tmp_path)
    server.start()
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    own = create_app("testing", overrides={
        "SQLALCHEMY_DATABASE_URI": uri, "REDIS_URL": server.url,
        "RATELIMIT_STORAGE_URI": limiter_storage_uri(server.url),
        "RATE_LIMIT_PUBLIC": "3 per minute"})
    if uri == "sqlite://":
        with own.app_context():
            db.create_all()  # an in-memory database of this app's own
    yield own, server
    server.stop()
    with own.app_context():
        if uri == "sqlite://":
            db.drop_all()
        db.session.remove()
    # Point the process's one limiter back at the suite's storage, out of fallback mode (as
    # tests/test_dependency_faults.py does).
    create_app("testing", overrides={"SQLALCHEMY_DATABASE_URI": uri})
    limiter._storage_dead = False


def test_limits_fall_back_to_memory_with_redis_down_and_recover(restartable, trips):
    own, server = restartable
    client = own.test_client()

    def read(address: str) -> int:
        return client.get(CATALOG, environ_base={"REMOTE_ADDR": address}).status_code

    assert [read("198.51.100.20") for _ in range(4)] == [200, 200, 200, 429]
    server.stop()
    # Counted in memory: still three a minute, never a 500.
    assert [read("198.51.100.21") for _ in range(4)] == [200, 200, 200, 429]
    server.start()
    # The limiter checks Redis again with a backoff (1, 2, 4... seconds): counted in Redis
    # again, in the request's one round trip.
    deadline = time.monotonic() + 40
    watcher = redis_lib.Redis.from_url(server.url)
    fresh = 100
    while time.monotonic() < deadline and not watcher.keys("LIMITS:*"):
        fresh += 1
        assert read(f"198.51.100.{fresh}") == 200
        time.sleep(0.5)
    assert watcher.keys("LIMITS:*"), "the limiter never went back to Redis"
    trips.clear()
    assert read("198.51.100.23") == 200
    assert len(trips) == 1
    assert [read("198.51.100.23") for _ in range(3)] == [200, 200, 429]
    watcher.close()


# --- a signed-in read decided by its round trip ------------------------------------------------

@pytest.fixture
def evaluated(monkeypatch):
    """The limits Flask-Limiter itself evaluates: its fixed-window strategy's `hit` and
    `test` calls, on every instance (init_app makes a new one)."""
    calls: list[str] = []
    for name in ("hit", "test"):
        original = getattr(FixedWindowRateLimiter, name)

        def spy(self, item, *identifiers, cost=1, _name=name, _original=original):
            calls.append(f"{_name} {item}")
            return _original(self, item, *identifiers, cost=cost)

        monkeypatch.setattr(FixedWindowRateLimiter, name, spy)
    return calls


def test_a_signed_in_read_with_room_is_decided_by_its_round_trip(
        app, client, make_user, auth_headers, default_limit, evaluated, trips):
    """Counted once, in the one round trip, and allowed without the limiter evaluating it;
    the first count over the limit goes to the limiter, which refuses it as before."""
    student = auth_headers(make_user())
    assert client.get(UNREAD, headers=student).status_code == 200  # fills the user mirror
    default_limit("5 per minute")  # the settings changed: the plan is resolved at once
    for count in range(1, 6):
        trips.clear()
        response = client.get(UNREAD, headers=student)
        assert response.status_code == 200, response.get_json()
        assert response.get_json() == {"unread_count": 0}
        assert len(trips) == 1 and b"EVALSHA" in trips[0]
        assert counter(app, "unread_count") == count  # counted once, nothing given back
    assert evaluated == []
    refused_with_retry_after(client.get(UNREAD, headers=student))
    assert evaluated == ["hit 5 per 1 minute"]
    assert counter(app, "unread_count") == 6


def test_a_signed_in_read_of_a_decorated_route_is_decided_to_the_same_count(
        app, client, make_user, auth_headers, monkeypatch, evaluated):
    student = auth_headers(make_user())
    monkeypatch.setitem(app.config, "RATE_LIMIT_PUBLIC", "3 per minute")
    assert [client.get(CATALOG, headers=student).status_code for _ in range(3)] == [200] * 3
    assert evaluated == []
    refused_with_retry_after(client.get(CATALOG, headers=student))
    assert evaluated == ["hit 3 per 1 minute"]
    assert counter(app, "public.courses") == 4
    # Changed at run time: the next decided read counts the new limit, the old one keeps the
    # one count the request before it took.
    monkeypatch.setitem(app.config, "RATE_LIMIT_PUBLIC", "2 per minute")
    address = {"REMOTE_ADDR": "198.51.100.30"}
    assert [client.get(CATALOG, headers=student, environ_base=address).status_code
            for _ in range(3)] == [200, 200, 429]
    assert counter(app, "198.51.100.30/public.courses/2/") == 3


def test_guests_writes_and_the_fallback_are_still_decided_by_the_limiter(
        app, client, make_user, auth_headers, default_limit, evaluated, monkeypatch):
    student = auth_headers(make_user())
    default_limit("50 per minute")
    assert client.get(UNREAD, headers=student).status_code == 200
    assert evaluated == []
    # A guest: the catalog fast path learns an endpoint's limits from the limiter's record.
    assert client.get(CATALOG).status_code == 200
    assert evaluated and all(call.startswith("hit ") for call in evaluated)
    evaluated.clear()
    # A write: its X-RateLimit-* headers come from the limiter's record.
    response = client.put(f"{API}/notifications/read-all", headers=student)
    assert response.status_code == 200 and response.headers["X-RateLimit-Limit"] == "50"
    assert evaluated == ["hit 50 per 1 minute"]
    evaluated.clear()
    # The limiter on its in-memory fallback: it counts, in memory, and decides.
    monkeypatch.setattr(limiter, "_storage_dead", True)
    assert client.get(UNREAD, headers=student).status_code == 200
    assert evaluated == ["hit 50 per 1 minute"]


def test_headers_on_every_answer_leave_every_read_to_the_limiter(
        app, client, make_user, auth_headers, default_limit, evaluated, monkeypatch):
    """With RATE_LIMIT_HEADERS=all each answer carries the limiter's record of the request,
    so the trip decides nothing: the changed setting is followed from the next request, and
    back again once it is restored."""
    student = auth_headers(make_user())
    default_limit("50 per minute")
    assert client.get(UNREAD, headers=student).status_code == 200
    assert evaluated == []
    monkeypatch.setitem(app.config, "RATELIMIT_HEADERS_ENABLED", True)
    assert client.get(UNREAD, headers=student).status_code == 200
    assert evaluated == ["hit 50 per 1 minute"]
    monkeypatch.setitem(app.config, "RATELIMIT_HEADERS_ENABLED", False)
    assert client.get(UNREAD, headers=student).status_code == 200
    assert evaluated == ["hit 50 per 1 minute"]
    assert counter(app, "unread_count") == 3


def test_a_junk_token_is_no_way_around_a_decided_limit(
        app, client, make_user, auth_headers, default_limit):
    """Any Authorization header makes a read decidable; a forged or garbled token is counted
    like a real one before the sign-in check refuses it, and the limit still bites."""
    default_limit("5 per minute")
    junk = [{"Authorization": value} for value in (
        "Bearer junk", "Bearer a.b.c", "Basic Zm9vOmJhcg==", "Bearer \x00", "x" * 4000)]
    statuses = [client.get(UNREAD, headers=headers).status_code for headers in junk]
    assert statuses == [401] * 5, statuses
    refused_with_retry_after(client.get(UNREAD, headers={"Authorization": "Bearer junk"}))
    # A real token from the same address shares the address's window: refused too.
    refused_with_retry_after(client.get(UNREAD, headers=auth_headers(make_user())))
    assert counter(app, "unread_count") == 7


def test_concurrent_signed_in_reads_at_the_limit_let_exactly_the_limit_through(
        app, make_user, auth_headers, default_limit):
    """Sixteen reads at once against five a minute: five answered, eleven refused, sixteen
    counted; the decision is the atomic count's, whichever request gets there first."""
    student = auth_headers(make_user())
    default_limit("5 per minute")
    barrier = threading.Barrier(16)
    statuses: list[int] = []

    def read() -> None:
        client = app.test_client()
        barrier.wait()
        statuses.append(client.get(UNREAD, headers=student).status_code)

    threads = [threading.Thread(target=read) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 5 + [429] * 11
    assert counter(app, "unread_count") == 16
