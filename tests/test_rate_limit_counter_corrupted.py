"""A rate-limit counter that Redis holds as something other than an integer (an operator's
typo, a restore of the wrong key, a hostile write to a shared Redis) is counted afresh
(utils/pipeline/round_trip.py, `RoundTripRedisStorage.incr`).

Before, every count of it failed: Flask-Limiter fell back to counting in the process's memory,
so the limit was no longer shared by the workers and hosts, and the key, without a TTL, kept
it so for good. The limit must still be enforced in Redis, on the fast paths' routes and
Flask's alike, and a counter that is a number must never be touched."""
from __future__ import annotations

import logging

import pytest
from limits.storage import RedisStorage

from tests.support.fast_apps import redis_app
from tests.support.learning import API, actor_in
from utils.extensions import limiter
from utils.pipeline import redis_client

LIMIT = 3
BAD = (b"garbage", b"1e3", b"", b"-", b"9" * 40, "é".encode(), b"12 ", "a list", "a hash")


def _corrupt(store, key: bytes, bad) -> None:
    """The counter replaced by `bad`, without a TTL, as a hand-written key has: a value, or a
    key of another type (INCRBY answers WRONGTYPE)."""
    store.delete(key)
    if bad == "a list":
        store.rpush(key, b"1")
    elif bad == "a hash":
        store.hset(key, "count", b"1")
    else:
        store.set(key, bad)


@pytest.fixture
def limited(app):
    with redis_app(app, RATELIMIT_DEFAULT=f"{LIMIT} per minute",
                   RATE_LIMIT_PUBLIC=f"{LIMIT} per minute") as fast:
        store = redis_client.for_url(fast.config["REDIS_URL"])
        store.script_load(RedisStorage.SCRIPT_INCR_EXPIRE)
        yield fast, store


def _counters(store, endpoint: str) -> list[bytes]:
    return [key for key in store.keys("LIMITS*") if f"/{endpoint}/".encode() in key]


@pytest.mark.parametrize("bad", BAD)
def test_a_corrupted_counter_is_counted_afresh_in_redis(limited, bad, caplog):
    fast, store = limited
    client = fast.test_client()
    learner = actor_in(fast, "student", 1)
    reads = [(f"{API}/notifications/unread-count", learner.headers,
              "notifications.unread_count"),  # the signed-in fast path's
             (f"{API}/public/get-courses", {}, "public.courses"),  # the catalog fast path's
             (f"{API}/users/profile", learner.headers, "users.get_profile")]  # Flask's alone
    for path, headers, endpoint in reads:
        assert client.get(path, headers=headers).status_code == 200, path
        (key,) = _counters(store, endpoint)
        _corrupt(store, key, bad)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            for n in range(1, LIMIT + 1):
                answered = client.get(path, headers=headers)
                assert answered.status_code == 200, (path, n, answered.get_json())
                assert store.get(key) == str(n).encode(), path  # counted in Redis
        assert 0 < store.ttl(key) <= 60, path
        assert client.get(path, headers=headers).status_code == 429, path
        assert store.get(key) == str(LIMIT + 1).encode()  # counted, as Flask-Limiter counts
        assert "in-memory" not in caplog.text, caplog.text
        assert "was not a number: counted afresh" in caplog.text
        assert not limiter._storage_dead  # Flask-Limiter's fallback flag: never raised
        store.delete(key)


def test_a_counter_that_is_a_number_is_never_removed(limited):
    fast, store = limited
    with fast.app_context():
        storage = limiter.storage
    for value in (b"7", b"-2", b"0", b"9" * 18):
        store.set("LIMITS:probe", value)
        assert storage.repair(keys=["LIMITS:probe"]) == 0
        assert store.get("LIMITS:probe") == value
    store.delete("LIMITS:probe")
    assert storage.repair(keys=["LIMITS:probe"]) == 0  # missing: nothing to do
    for bad in BAD:
        _corrupt(store, "LIMITS:probe", bad)
        assert storage.repair(keys=["LIMITS:probe"]) == 1
        assert not store.exists("LIMITS:probe"), bad
