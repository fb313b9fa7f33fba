"""A hot request's Redis commands in one write without a pipeline object
(utils/pipeline/redis_client.one_trip), and what the fast paths do with an error among its
replies: a Redis that lost the limiter's script (NOSCRIPT) after a restart or a SCRIPT FLUSH."""
from __future__ import annotations

import pytest
import redis as redis_lib
from limits.storage import RedisStorage

from tests.conftest import redis_url, require_service
from tests.support.assertions import ok
from tests.test_catalog_fast_path import RoundTrips, _course, fast_app, flask_handled  # noqa: F401
from utils.pipeline import redis_client, round_trip

API = "/api/v1"


@pytest.fixture
def client():
    client = redis_lib.Redis.from_url(require_service("Redis (TEST_REDIS_URL)", redis_url()))
    client.delete("trip:n", "trip:s", "trip:list")
    yield client
    client.delete("trip:n", "trip:s", "trip:list")
    client.close()


def test_replies_are_raw_in_order_with_an_error_in_its_place(client, monkeypatch):
    client.set("trip:s", "text")
    client.rpush("trip:list", "a")
    trips = RoundTrips(monkeypatch)
    replies = redis_client.one_trip(client, [
        ("INCRBY", "trip:n", 5),
        ("EVALSHA", "0" * 40, 1, "trip:n", 60, 1),  # a script the server does not hold
        ("INCR", "trip:list"),  # the wrong type
        ("MGET", "trip:n", "trip:s", "trip:none"),
        ("TTL", "trip:n"),
    ])
    assert trips.count == 1
    assert replies[0] == 5
    assert isinstance(replies[1], redis_lib.exceptions.NoScriptError)
    assert isinstance(replies[2], redis_lib.ResponseError) and "WRONGTYPE" in str(replies[2])
    assert replies[3] == [b"5", b"text", None] and replies[4] == -1
    # Every reply was read: the pooled connection answers the next trip with its own replies.
    assert redis_client.one_trip(client, [("GET", "trip:n")]) == [b"5"]
    assert len(client.connection_pool._available_connections) == 1


def test_a_connection_lost_mid_trip_raises_and_is_not_reused(client, monkeypatch):
    redis_client.one_trip(client, [("PING",)])
    (connection,) = client.connection_pool._available_connections
    original = connection.read_response
    calls = []

    def lost(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first reply read, the second lost with the connection
            raise redis_lib.ConnectionError("Connection closed by server.")
        return original(*args, **kwargs)

    monkeypatch.setattr(connection, "read_response", lost)
    with pytest.raises(redis_lib.ConnectionError):
        redis_client.one_trip(client, [("INCR", "trip:n"), ("INCR", "trip:n")])
    monkeypatch.undo()
    # Dropped, not handed back half read: the next trip reconnects and reads its own reply.
    assert connection._sock is None
    assert redis_client.one_trip(client, [("INCR", "trip:n")]) == [3]


def test_a_lost_script_sends_the_guest_to_flask_counted_once(fast_app, monkeypatch):
    course_id = _course(fast_app)
    client = fast_app.test_client()
    path = f"{API}/public/courses/{course_id}"
    address = {"REMOTE_ADDR": "203.0.113.77"}
    store = redis_client.for_url(fast_app.config["REDIS_URL"])

    def window() -> int:
        (key,) = store.keys("LIMITS:*203.0.113.77*")
        return int(store.get(key))

    ok(client.get(path, environ_base=address))
    ok(client.get(path, environ_base=address))  # the fast path has learned the endpoint
    with flask_handled(fast_app) as handled:
        ok(client.get(path, environ_base=address))
    assert handled == [] and window() == 3
    store.script_flush()  # a restarted Redis: the limiter's script is gone
    with flask_handled(fast_app) as handled:
        answer = ok(client.get(path, environ_base=address))
    assert handled == [path] and answer["course"]["id"] == course_id
    assert window() == 4  # Flask's limiter counted it; the fast path took nothing
    assert store.script_exists(round_trip.INCR_EXPIRE_SHA) == [True]  # loaded again
    with flask_handled(fast_app) as handled:  # and the next is the fast path's again
        ok(client.get(path, environ_base=address))
    assert handled == [] and window() == 5


def test_the_signed_in_read_of_a_lost_script_is_flasks_counted_once(app, monkeypatch):
    from tests.test_signed_in_fast_path import LIMIT, Learner
    from tests.support.fast_apps import redis_app

    with redis_app(app, RATELIMIT_DEFAULT=f"{LIMIT * 3} per minute") as fast:
        store = redis_client.for_url(fast.config["REDIS_URL"])
        store.script_load(RedisStorage.SCRIPT_INCR_EXPIRE)
        learner = Learner(fast)
        client = fast.test_client()
        path = f"{API}/notifications/unread-count"

        def counted() -> int:
            return sum(int(store.get(key)) for key in store.keys("LIMITS*"))

        first = ok(client.get(path, headers=learner.student.headers))
        ok(client.get(path, headers=learner.student.headers))  # learned
        with flask_handled(fast) as handled:
            ok(client.get(path, headers=learner.student.headers))
        assert handled == [] and counted() == 3
        store.script_flush()
        with flask_handled(fast) as handled:
            answer = ok(client.get(path, headers=learner.student.headers))
        assert handled == [path] and counted() == 4 and answer == first


@pytest.fixture
def renewing_app(app):
    from tests.support.fast_apps import redis_app

    with redis_app(app, RATE_LIMIT_PUBLIC="100 per minute", CATALOG_CACHE_SECONDS=30) as fast:
        yield fast


def test_a_copy_about_to_expire_is_renewed_by_one_request(renewing_app):
    """Refresh ahead (catalog_cache.REFRESH_AHEAD): in the last sixth of a copy's life, one
    hit renews it (the reader computes it again, the copy gets a full life), once per window
    on every worker; the others, and every hit before the window, are served the copy."""
    from tests.support.queries import recorded_statements
    from utils.pipeline import catalog_cache

    course_id = _course(renewing_app)
    client = renewing_app.test_client()
    path = f"{API}/public/courses/{course_id}"
    store = redis_client.for_url(renewing_app.config["REDIS_URL"])
    first = ok(client.get(path))  # Flask computes, keeps the copy; the fast path learns
    ok(client.get(path))
    (key,) = store.keys(f"{catalog_cache.ENTRY_PREFIX}*")
    claim = catalog_cache.REFRESH_PREFIX + key.decode()

    with recorded_statements(renewing_app) as statements, \
            flask_handled(renewing_app) as handled:
        assert ok(client.get(path)) == first  # early in its life: served, not renewed
    assert statements == [] and handled == [] and not store.exists(claim)
    assert store.pttl(key) > 25_000

    store.pexpire(key, 2_000)  # inside the window (5 s of 30)
    with recorded_statements(renewing_app) as statements, \
            flask_handled(renewing_app) as handled:
        assert ok(client.get(path)) == first  # renewed: computed by the reader, before Flask
    assert statements and handled == []
    assert store.pttl(key) > 25_000 and 0 < store.pttl(claim) <= 5_000

    store.pexpire(key, 2_000)  # the window again, its claim still held: one renewal a window
    with recorded_statements(renewing_app) as statements:
        assert ok(client.get(path)) == first
    assert statements == [] and store.pttl(key) <= 2_000
    store.delete(claim)


def test_a_renewal_sees_a_write_and_a_declined_one_leaves_flask_to_answer(renewing_app):
    from models import Course, db
    from utils.pipeline import catalog_cache

    course_id = _course(renewing_app)
    client = renewing_app.test_client()
    path = f"{API}/public/courses/{course_id}"
    store = redis_client.for_url(renewing_app.config["REDIS_URL"])
    ok(client.get(path))
    ok(client.get(path))
    (key,) = store.keys(f"{catalog_cache.ENTRY_PREFIX}*")
    with renewing_app.app_context():
        db.session.get(Course, course_id).title = "Renamed"
        db.session.commit()  # the version moves: the copy is stale, whatever its life
    store.pexpire(key, 2_000)
    assert ok(client.get(path))["course"]["title"] == "Renamed"
    with renewing_app.app_context():
        db.session.get(Course, course_id).status = "draft"
        db.session.commit()
    store.pexpire(key, 2_000)
    with flask_handled(renewing_app) as handled:
        assert client.get(path).status_code == 404  # the reader declines: Flask's answer
    assert handled == [path]
