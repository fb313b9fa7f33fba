"""Every kind of error comes back in the one JSON shape: {"error", "code", "details"?}."""
from __future__ import annotations

import json
import logging

import pytest
from sqlalchemy import func, select

from models import MasterCategory, db


def assert_error_shape(response, status: int, code: str):
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]
    assert set(body) <= {"error", "code", "details"}
    return body


def test_unknown_api_path_is_json_404(client):
    body = assert_error_shape(client.get("/api/v1/no/such/thing"), 404, "not_found")
    assert "<html" not in json.dumps(body).lower()


def test_wrong_method_is_405_and_keeps_allow(client):
    response = client.delete("/api/v1/health")
    assert_error_shape(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "HEAD"}


def test_malformed_json_is_400(client):
    response = client.post("/api/v1/_probe/echo", data="{not json",
                           content_type="application/json")
    assert_error_shape(response, 400, "malformed_json")


def test_invalid_utf8_json_is_400(client):
    response = client.post("/api/v1/_probe/echo", data=b'{"name": "\xff\xfe"}',
                           content_type="application/json")
    assert_error_shape(response, 400, "malformed_json")


def test_non_json_body_to_json_route_is_415(client):
    response = client.post("/api/v1/_probe/echo", data={"name": "x", "count": "1"})
    assert_error_shape(response, 415, "unsupported_media_type")


def test_validation_error_is_422_with_field_details(client):
    response = client.post("/api/v1/_probe/echo", json={"name": "", "count": "many"})
    body = assert_error_shape(response, 422, "validation_error")
    assert set(body["details"]) == {"name", "count"}


def test_missing_field_and_overlong_and_out_of_range_are_422(client):
    body = assert_error_shape(client.post("/api/v1/_probe/echo", json={"count": 1}),
                              422, "validation_error")
    assert "name" in body["details"]
    body = assert_error_shape(client.post("/api/v1/_probe/echo",
                                          json={"name": "x" * 21, "count": 1}),
                              422, "validation_error")
    assert "name" in body["details"]
    body = assert_error_shape(client.post("/api/v1/_probe/echo",
                                          json={"name": "ok", "count": 11}),
                              422, "validation_error")
    assert "count" in body["details"]


def test_json_array_body_is_422_not_500(client):
    response = client.post("/api/v1/_probe/echo", json=[1, 2, 3])
    assert_error_shape(response, 422, "validation_error")


def test_valid_input_passes_and_unknown_fields_are_ignored(client):
    response = client.post("/api/v1/_probe/echo",
                           json={"name": "  Ada  ", "count": 3, "extra": "ignored"})
    assert response.status_code == 200
    assert response.json == {"name": "Ada", "count": 3}


def test_api_error_carries_details(client):
    body = assert_error_shape(client.post("/api/v1/_probe/conflict"), 409, "conflict")
    assert body["details"] == {"email": "taken"}


def test_integrity_error_is_409_without_database_text(client, app):
    response = client.post("/api/v1/_probe/duplicate-category")
    body = assert_error_shape(response, 409, "conflict")
    text = json.dumps(body).lower()
    for leak in ("unique", "constraint", "insert", "sqlite", "psycopg", "master_categories"):
        assert leak not in text
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(MasterCategory)) == 0


def test_unexpected_error_is_generic_500_rolled_back_and_logged(client, app):
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    from utils.middleware import RequestIdFilter

    handler = Collect()
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("lms")
    logger.addHandler(handler)
    try:
        response = client.post("/api/v1/_probe/boom", headers={"X-Request-ID": "req-boom-1"})
    finally:
        logger.removeHandler(handler)
    body = assert_error_shape(response, 500, "internal_error")
    assert "secret internal detail" not in json.dumps(body)
    assert response.headers["X-Request-ID"] == "req-boom-1"
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert errors and errors[0].request_id == "req-boom-1" and errors[0].exc_info
    with app.app_context():  # the flushed row was rolled back, not half-written
        assert db.session.scalar(select(func.count()).select_from(MasterCategory)) == 0


def test_body_over_max_content_length_is_413(client, app):
    previous = app.config["MAX_CONTENT_LENGTH"]
    app.config["MAX_CONTENT_LENGTH"] = 1024
    try:
        response = client.post("/api/v1/_probe/upload", data=b"x" * 2048,
                               content_type="application/octet-stream")
    finally:
        app.config["MAX_CONTENT_LENGTH"] = previous
    body = assert_error_shape(response, 413, "payload_too_large")
    assert "1024" in body["error"]


def test_rate_limit_is_429_with_retry_after(client):
    assert client.get("/api/v1/_probe/limited").status_code == 200
    assert client.get("/api/v1/_probe/limited").status_code == 200
    response = client.get("/api/v1/_probe/limited")
    assert_error_shape(response, 429, "rate_limited")
    assert 1 <= int(response.headers["Retry-After"]) <= 60


@pytest.mark.parametrize("path", ["/api/v1/_probe/me", "/api/v1/_probe/admin-only"])
def test_missing_token_is_401(client, path):
    assert_error_shape(client.get(path), 401, "token_missing")


def test_malformed_token_is_401_not_422(client):
    response = client.get("/api/v1/_probe/me", headers={"Authorization": "Bearer not.a.jwt"})
    assert_error_shape(response, 401, "token_invalid")


def test_expired_token_is_401(client, make_user, auth_headers):
    from datetime import timedelta

    user_id = make_user()
    headers = auth_headers(user_id, expires=timedelta(seconds=-10))
    assert_error_shape(client.get("/api/v1/_probe/me", headers=headers), 401, "token_expired")


def test_token_signed_with_another_key_is_401(client, make_user):
    import jwt as pyjwt

    user_id = make_user()
    token = pyjwt.encode({"sub": str(user_id), "type": "access", "fresh": False,
                          "jti": "x", "iat": 1, "nbf": 1, "exp": 9999999999},
                         "some-other-secret-of-sufficient-length!!", algorithm="HS256")
    response = client.get("/api/v1/_probe/me", headers={"Authorization": f"Bearer {token}"})
    assert_error_shape(response, 401, "token_invalid")


def test_alg_none_token_is_401(client, make_user):
    import base64

    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    user_id = make_user(role="admin")
    token = b64({"alg": "none", "typ": "JWT"}) + "." + b64(
        {"sub": str(user_id), "type": "access", "jti": "y", "exp": 9999999999}) + "."
    response = client.get("/api/v1/_probe/admin-only",
                          headers={"Authorization": f"Bearer {token}"})
    assert_error_shape(response, 401, "token_invalid")


def test_refresh_token_is_refused_where_access_is_required(client, make_user, auth_headers):
    user_id = make_user()
    response = client.get("/api/v1/_probe/me", headers=auth_headers(user_id, refresh=True))
    assert_error_shape(response, 401, "token_invalid")


def test_wrong_role_is_403_and_right_role_passes(client, make_user, auth_headers):
    student = make_user("student")
    admin = make_user("admin")
    assert_error_shape(client.get("/api/v1/_probe/admin-only", headers=auth_headers(student)),
                       403, "role_required")
    response = client.get("/api/v1/_probe/admin-only", headers=auth_headers(admin))
    assert response.status_code == 200 and response.json == {"ok": True}


def test_deactivated_user_is_401(client, app, make_user, auth_headers):
    from models import User

    user_id = make_user("admin")
    headers = auth_headers(user_id)
    with app.app_context():
        db.session.get(User, user_id).is_active = False
        db.session.commit()
    assert_error_shape(client.get("/api/v1/_probe/admin-only", headers=headers),
                       401, "account_inactive")


def test_token_of_deleted_user_is_401(client, app, make_user, auth_headers):
    from models import User

    user_id = make_user()
    headers = auth_headers(user_id)
    with app.app_context():
        db.session.delete(db.session.get(User, user_id))
        db.session.commit()
    assert_error_shape(client.get("/api/v1/_probe/me", headers=headers), 401, "token_invalid")
