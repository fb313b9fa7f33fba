"""Work a signed-in read no longer repeats per request (issue 21, round four): the learner's
lists run statements built once (utils.pagination.PageStatement), no request opens Flask's
cookie session, and redis-py parses with hiredis. Each still answers what it answered: the
lists' rows and totals are checked for two users, past the exact-count limit too."""
from __future__ import annotations

from datetime import timedelta

import flask
import pytest
import redis
from flask.sessions import SecureCookieSessionInterface
from sqlalchemy import insert
from sqlalchemy.sql.selectable import Select

from models import Notification, db
from tests.conftest import redis_url, require_service
from tests.support.assertions import ok
from tests.support.queries import recorded_statements
from utils import pagination
from utils.helpers import utcnow
from utils.pipeline import redis_client

API = "/api/v1"
LEARNER_LISTS = ("/notifications", "/notifications?unread=true", "/users/certificates",
                 "/users/enrolled-courses", "/users/completed-courses",
                 "/enrollments?status=active", "/enrollments")
# Signed in, the catalog is not cached: each shape of filters has its statement.
CATALOG_LISTS = ("/courses", "/public/get-courses?sort=title&min_price=1",
                 "/public/courses/search?q=data+models", "/public/get-courses?search=%25_%5C",
                 "/public/get-courses?is_free=true&language=EN&difficulty=beginner")


def add_notifications(app, user_id: int, count: int, read_every: int = 0) -> None:
    now = utcnow()
    with app.app_context():
        db.session.execute(insert(Notification), [
            {"user_id": user_id, "kind": "system", "title": f"n{n}", "message": "m",
             "is_read": bool(read_every) and n % read_every == 0,
             "created_at": now - timedelta(seconds=n)} for n in range(count)])
        db.session.commit()


@pytest.fixture
def constructed(monkeypatch):
    """Page statements built while the test runs: each added column, limit and offset counted."""
    calls = []
    for name in ("add_columns", "limit", "offset"):
        original = getattr(Select, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Select, name, counted)
    return calls


def test_learner_lists_build_no_statement_per_request(client, make_user, auth_headers,
                                                      constructed):
    headers = auth_headers(make_user())
    for path in LEARNER_LISTS + CATALOG_LISTS:
        ok(client.get(API + path, headers=headers))  # whatever the first request sets up
    del constructed[:]
    for path in LEARNER_LISTS + CATALOG_LISTS:
        body = ok(client.get(API + path, headers=headers))
        assert body["pagination"]["total"] == 0
    # Other values of the same filters: the same statements.
    for path in ("/public/get-courses?sort=title&min_price=7.5", "/public/courses/search?q=x+y",
                 "/public/get-courses?is_free=true&language=fr&difficulty=advanced"):
        assert ok(client.get(API + path, headers=headers))["pagination"]["total"] == 0
    assert constructed == []


def test_a_built_catalog_page_binds_each_request_s_values(app, client, make_user,
                                                          auth_headers):
    """The catalog's statements are kept by shape; the values are each request's own: a price
    bound, the search words (LIKE's wildcards taken literally), the language lowered."""
    from models import Course
    instructor = make_user("instructor")
    with app.app_context():
        for n, (title, price, language) in enumerate((
                ("Data models", "10.00", "en"), ("Data_100% models", "0.00", "EN"),
                ("Cooking", "50.00", "fr"))):
            db.session.add(Course(title=title, slug=f"c{n}", price=price, language=language,
                                  status="published", instructor_id=instructor))
        db.session.commit()
    headers = auth_headers(make_user())

    def titles(query: str) -> list[str]:
        return [c["title"] for c in ok(client.get(f"{API}/public/get-courses?{query}",
                                                  headers=headers))["courses"]]

    assert titles("sort=title&min_price=5") == ["Cooking", "Data models"]
    assert titles("sort=title&min_price=20") == ["Cooking"]
    assert titles("sort=title&language=En") == ["Data models", "Data_100% models"]
    assert titles("sort=title&language=FR") == ["Cooking"]
    assert titles("sort=title&search=data") == ["Data models", "Data_100% models"]
    assert titles("sort=title&search=cook") == ["Cooking"]
    assert titles("sort=title&search=%25") == []  # no word: nothing
    assert titles("sort=title&is_free=true") == ["Data_100% models"]


def test_a_built_page_answers_each_user_their_own_rows_and_totals(app, client, make_user,
                                                                  auth_headers, monkeypatch):
    """One statement object serves every user: the bound user decides the rows, the exact
    count's cap is read at each call, and a long list's estimate is kept per user."""
    monkeypatch.setattr(pagination, "EXACT_COUNT_LIMIT", 5)
    monkeypatch.setattr(pagination, "_estimates", {})
    many, few = make_user(), make_user()
    add_notifications(app, many, 12, read_every=3)
    add_notifications(app, few, 3)
    postgres = app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql")

    with recorded_statements(app) as seen:
        body = ok(client.get(f"{API}/notifications?per_page=4&page=2",
                             headers=auth_headers(many)))
    assert [n["title"] for n in body["notifications"]] == ["n4", "n5", "n6", "n7"]
    assert body["unread_count"] == 8
    meta = body["pagination"]
    if postgres:
        assert meta["total_is_estimate"] is True and meta["total"] >= 9
        assert len([s for s in seen if "notifications" in s]) == 2  # the page, the EXPLAIN
        assert len(pagination._estimates) == 1
        (key,) = pagination._estimates
        assert many in key[2]  # the estimate is the bound user's
    else:
        assert meta["total"] == 12 and "total_is_estimate" not in meta

    body = ok(client.get(f"{API}/notifications?per_page=2", headers=auth_headers(few)))
    assert [n["title"] for n in body["notifications"]] == ["n0", "n1"]
    assert body["pagination"] == {"page": 1, "per_page": 2, "total": 3, "pages": 2,
                                  "has_next": True, "has_prev": False}
    assert body["unread_count"] == 3
    # Past the end: no row carries the total, the built count runs with this user's id.
    with recorded_statements(app) as seen:
        body = ok(client.get(f"{API}/notifications?per_page=2&page=5",
                             headers=auth_headers(few)))
    assert body["notifications"] == [] and body["pagination"]["total"] == 3
    assert body["unread_count"] == 3
    assert len([s for s in seen if "notifications" in s]) == 3  # page, count, unread count

    add_notifications(app, few, 10)  # now long too: its own estimate, not the other's
    body = ok(client.get(f"{API}/notifications?per_page=4", headers=auth_headers(few)))
    if postgres:
        assert body["pagination"]["total_is_estimate"] is True
        assert len(pagination._estimates) == 2
    else:
        assert body["pagination"]["total"] == 13

    # The unread-only page is a statement of its own.
    body = ok(client.get(f"{API}/notifications?unread=true&per_page=20",
                         headers=auth_headers(many)))
    assert len(body["notifications"]) == 8
    assert all(not n["is_read"] for n in body["notifications"])


def test_no_request_opens_a_cookie_session(app, client, make_user, auth_headers, monkeypatch):
    built = []
    original = SecureCookieSessionInterface.get_signing_serializer

    def counted(self, app_):
        built.append(1)
        return original(self, app_)

    monkeypatch.setattr(SecureCookieSessionInterface, "get_signing_serializer", counted)
    forged = client.get(f"{API}/notifications/unread-count", headers={
        **auth_headers(make_user()), "Cookie": "session=eyJ4IjoxfQ.forged.sig"})
    assert ok(forged) == {"unread_count": 0}
    assert "Set-Cookie" not in forged.headers
    assert built == []
    with app.test_request_context("/"):
        assert flask.session.get("x") is None
        with pytest.raises(RuntimeError):
            flask.session["x"] = 1


def test_redis_replies_are_parsed_by_hiredis(app):
    require_service("Redis (TEST_REDIS_URL)", redis_url())
    assert redis.utils.HIREDIS_AVAILABLE
    with app.app_context():
        client = redis_client.get()
        connection = client.connection_pool.get_connection()
        try:
            assert type(connection._parser).__name__ == "_HiredisParser"
            assert client.ping() is True
        finally:
            client.connection_pool.release(connection)
