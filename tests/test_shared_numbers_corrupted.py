"""A number kept in Redis that is not a number (an operator's typo, a restore of the wrong
key, a hostile write to a shared Redis) must never cost a request a 5xx.

- The catalog version: the catalog answers from the database as if the version were unknown
  (counted each time, no copy served or kept), and the next catalog write replaces it with a
  fresh number from the clock, after which copies work again.
- The revocation mirror's epoch: the next sync treats it as lost (a full rebuild) and writes a
  number again; revoked tokens stay refused."""
from __future__ import annotations

from datetime import timedelta

import pytest

from models import Course, RevokedToken, User, db
from tests.support.assertions import ok
from tests.support.fast_apps import redis_app
from utils.helpers import utcnow
from utils.pipeline import catalog_cache, redis_client, shared_state

API = "/api/v1"
LIST = f"{API}/public/get-courses"
BAD = (b"garbage", b"12abc", b"1e3", b"", b"-", b"9" * 40, "é".encode())


def _teacher(app) -> int:
    with app.app_context():
        teacher = User(email="version-teacher@example.com", role="instructor",
                       first_name="Version", last_name="Teacher")
        teacher.set_password("Passw0rd!")
        db.session.add(teacher)
        db.session.commit()
        return teacher.id


def _publish(app, teacher: int, title: str) -> int:
    with app.app_context():
        course = Course(title=title, slug=title.lower().replace(" ", "-"),
                        instructor_id=teacher, status="published", price=0)
        db.session.add(course)
        db.session.commit()
        return course.id


def _corrupt(store, key: str, bad) -> None:
    """`key` replaced by `bad`: a value, or a key of another type ("a list", "a hash")."""
    store.delete(key)
    if bad == "a list":
        store.rpush(key, b"1")
    elif bad == "a hash":
        store.hset(key, "n", b"1")
    else:
        store.set(key, bad)


@pytest.mark.parametrize("seconds", [0, 30])
@pytest.mark.parametrize("last", ["é", "a list"])
def test_a_version_that_is_not_a_number_is_read_as_unknown(app, make_user, auth_headers,
                                                           seconds, last):
    with redis_app(app, CATALOG_CACHE_SECONDS=seconds, RATE_LIMIT_PUBLIC="1000 per minute",
                   RATE_LIMIT_SEARCH="1000 per minute") as fast:
        client = fast.test_client()
        teacher = _teacher(fast)
        first = _publish(fast, teacher, "Version one")
        reader = auth_headers(make_user())
        ok(client.get(LIST))  # the shared state synced: a version set
        with fast.app_context():
            store = redis_client.get()
        copies = f"{catalog_cache.ENTRY_PREFIX}*"
        for key in store.keys(copies):
            store.delete(key)
        def read_all(bad) -> None:
            for headers in ({}, reader):
                for path in (LIST, f"{LIST}?per_page=1", f"{API}/public/courses/{first}",
                             f"{API}/public/courses/search?q=version"):
                    response = client.get(path, headers=headers)
                    assert response.status_code == 200, (bad, path, response.data[:200])
            body = ok(client.get(LIST))
            assert [c["id"] for c in body["courses"]] == [first]
            assert body["pagination"]["total"] == 1

        for bad in BAD:
            _corrupt(store, catalog_cache.VERSION_KEY, bad)
            read_all(bad)
        assert store.keys(copies) == []  # nothing kept under a version that is not one
        # A key of another type reads as missing (MGET answers nil): copies are tagged 0, as
        # under a missing version, and are stale once a write sets a number.
        for bad in ("a hash", last):
            _corrupt(store, catalog_cache.VERSION_KEY, bad)
            read_all(bad)
        # A write while the version is garbage: a fresh number (the clock's) replaces it, and
        # the next pages see the new course at once, kept again when the cache is on.
        second = _publish(fast, teacher, "Version two")
        version = store.get(catalog_cache.VERSION_KEY)
        assert version is not None and version.isdigit() and int(version) > 10**15
        for _ in range(2):
            body = ok(client.get(LIST))
            assert [c["id"] for c in body["courses"]] == [second, first]
            assert body["pagination"]["total"] == 2
        assert bool(store.keys(copies)) == (seconds > 0)


def test_only_a_number_redis_can_increment_is_a_version():
    assert [catalog_cache.parse_version(v) for v in (b"0", b"17", b"-3", "42", 7, None)] == \
        [0, 17, -3, 42, 7, None]
    assert [catalog_cache.parse_version(v) for v in (*BAD, b" 1", b"1 ", b"1_0", b"+1",
                                                      b"0x10", b"1\n")] == [None] * 13
    assert catalog_cache.usable_version(None) and catalog_cache.usable_version(b"5")
    assert not catalog_cache.usable_version(b"garbage")


def test_an_epoch_that_is_not_a_number_is_rebuilt_by_the_next_sync(app):
    with redis_app(app) as fast, fast.app_context():
        store = redis_client.get()
        revoked = RevokedToken(jti="corrupted-epoch-probe", token_type="access",
                               expires_at=utcnow() + timedelta(hours=1))
        db.session.add(revoked)
        db.session.commit()
        for bad in (b"garbage", b"12abc", b"9" * 40, "a list", "a hash"):
            _corrupt(store, shared_state.EPOCH, bad)
            store.delete(shared_state.jti_key(revoked.jti), shared_state.LOCK)
            assert shared_state.sync(store) is True
            epoch = store.get(shared_state.EPOCH)
            assert epoch.isdigit() and int(epoch) >= revoked.id
            assert store.get(shared_state.jti_key(revoked.jti)) == b"1"  # rebuilt in full
