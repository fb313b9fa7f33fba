"""Liveness and readiness, including the answers when the database or Redis is down."""
from __future__ import annotations


from app import create_app
from tests.conftest import redis_url, require_service

UNREACHABLE_PG = "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere?connect_timeout=1"


def test_health_is_up(client):
    response = client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_ready_reports_database_and_redis(client, app):
    response = client.get("/api/v1/health/ready")
    assert response.status_code == 200
    checks = response.json["checks"]
    assert checks["database"] == "ok"
    expected_redis = "ok" if app.config.get("REDIS_URL") else "not_configured"
    assert checks["redis"] == expected_redis


def test_ready_is_503_when_database_is_down():
    app = create_app("testing", overrides={"SQLALCHEMY_DATABASE_URI": UNREACHABLE_PG,
                                           "REDIS_URL": None})
    response = app.test_client().get("/api/v1/health/ready")
    assert response.status_code == 503
    assert response.json == {"status": "unavailable",
                             "checks": {"database": "unavailable", "redis": "not_configured"}}


def test_ready_is_503_when_redis_is_down():
    app = create_app("testing", overrides={"SQLALCHEMY_DATABASE_URI": "sqlite://",
                                           "REDIS_URL": "redis://127.0.0.1:1/0"})
    response = app.test_client().get("/api/v1/health/ready")
    assert response.status_code == 503
    assert response.json["checks"] == {"database": "ok", "redis": "unavailable"}


def test_ready_with_real_redis():
    url = require_service("TEST_REDIS_URL (Redis)", redis_url())
    app = create_app("testing", overrides={"SQLALCHEMY_DATABASE_URI": "sqlite://",
                                           "REDIS_URL": url})
    response = app.test_client().get("/api/v1/health/ready")
    assert response.status_code == 200
    assert response.json["checks"]["redis"] == "ok"
