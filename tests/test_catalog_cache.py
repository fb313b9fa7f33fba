"""The public catalog's cache: ETags and 304s always; a short Redis cache of guest answers that
any catalog write invalidates at once (a version number in the key)."""
from __future__ import annotations

import pytest

from app import create_app
from models import db
from tests.conftest import redis_url, require_service
from tests.support.queries import recorded_statements
from utils.pipeline import catalog_cache


@pytest.fixture
def cache_app(app):
    """An app with Redis, on the suite's database (Redis is where the cache lives)."""
    url = require_service("Redis (TEST_REDIS_URL)", redis_url())
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    cached = create_app("testing", overrides={"SQLALCHEMY_DATABASE_URI": uri, "REDIS_URL": url,
                                              "UPLOAD_FOLDER": app.config["UPLOAD_FOLDER"]})
    with cached.app_context():
        if uri == "sqlite://":
            db.create_all()
    yield cached
    with cached.app_context():
        if uri == "sqlite://":
            db.drop_all()
        db.session.remove()
    create_app("testing", overrides={"SQLALCHEMY_DATABASE_URI": uri})  # the shared limiter


def _published_course(client, headers, title="Cached course"):
    course = client.post("/api/v1/courses", headers=headers, json={"title": title}).json["course"]
    module = client.post(f"/api/v1/courses/{course['id']}/modules", headers=headers,
                         json={"title": "M"}).json["module"]
    client.post(f"/api/v1/lessons/create-lessons/{module['id']}", headers=headers,
                json={"title": "L", "content": "secret body"})
    assert client.put(f"/api/v1/courses/{course['id']}", headers=headers,
                      json={"status": "published"}).status_code == 200
    return course["id"]


def _instructor(app):
    from flask_jwt_extended import create_access_token

    from models import User

    with app.app_context():
        user = User(email="cache-teacher@example.com", role="instructor", first_name="Cache",
                    last_name="Teacher")
        user.set_password("Passw0rd!")
        db.session.add(user)
        db.session.commit()
        return {"Authorization": f"Bearer {create_access_token(user)}"}


def test_etag_and_304_without_redis(client, app, make_user, auth_headers):
    headers = auth_headers(make_user("instructor"))
    _published_course(client, headers)
    first = client.get("/api/v1/public/get-courses")
    assert first.status_code == 200 and first.headers["ETag"]
    assert first.headers["Cache-Control"].startswith("public, max-age=")
    again = client.get("/api/v1/public/get-courses",
                       headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    stale = client.get("/api/v1/public/get-courses", headers={"If-None-Match": '"other"'})
    assert stale.status_code == 200 and stale.json == first.json


def test_guest_answers_are_cached_and_writes_invalidate_them(cache_app):
    from utils.pipeline import redis_client

    client = cache_app.test_client()
    headers = _instructor(cache_app)
    course_id = _published_course(client, headers)
    first = client.get(f"/api/v1/public/courses/{course_id}")
    assert first.json["course"]["title"] == "Cached course"
    with cache_app.app_context():
        keys = [k.decode() for k in
                redis_client.get().keys(catalog_cache.ENTRY_PREFIX + "/api/v1/public/*")]
    assert any(k.endswith(f"/api/v1/public/courses/{course_id}?") for k in keys)
    # A hit answers the same body without touching the database.
    with recorded_statements(cache_app) as statements:
        hit = client.get(f"/api/v1/public/courses/{course_id}")
    assert hit.json == first.json and hit.headers["ETag"] == first.headers["ETag"]
    assert not any("FROM courses" in s for s in statements), statements
    # A write through any path is visible at once.
    assert client.put(f"/api/v1/courses/{course_id}", headers=headers,
                      json={"title": "Renamed"}).status_code == 200
    fresh = client.get(f"/api/v1/public/courses/{course_id}")
    assert fresh.json["course"]["title"] == "Renamed" and fresh.headers["ETag"] != first.headers["ETag"]
    # ...also a bulk statement (deleting the course's lesson).
    listing = client.get("/api/v1/public/get-courses").json
    assert [c["id"] for c in listing["courses"]] == [course_id]
    assert client.delete(f"/api/v1/courses/{course_id}", headers=headers).status_code == 200
    assert client.get("/api/v1/public/get-courses").json["courses"] == []


def test_signed_in_callers_are_never_served_a_guest_copy(cache_app):
    client = cache_app.test_client()
    headers = _instructor(cache_app)
    course_id = _published_course(client, headers)
    guest = client.get(f"/api/v1/courses/{course_id}")
    assert guest.json["course"]["modules"][0]["lessons"][0]["content"] is None
    owner = client.get(f"/api/v1/courses/{course_id}", headers=headers)
    assert owner.json["course"]["modules"][0]["lessons"][0]["content"] == "secret body"
    assert owner.headers["Cache-Control"] == "private, no-cache"
    assert client.get(f"/api/v1/courses/{course_id}").json == guest.json


def test_invalid_queries_are_not_cached(cache_app):
    client = cache_app.test_client()
    assert client.get("/api/v1/public/get-courses?page=0").status_code == 422
    assert client.get("/api/v1/public/get-courses?page=0").status_code == 422
