"""Request ids, structured logs, secure headers, CORS, pagination and the API description."""
from __future__ import annotations

import json
import logging
import re

import pytest

from models import MasterCategory, db
from tests.support.queries import recorded_statements
from tests.test_one_round_trip import set_default_limit
from utils.middleware import JsonFormatter, RequestIdFilter


@pytest.fixture
def lms_records():
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Collect()
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("lms")
    previous = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(previous)


def test_request_id_is_echoed(client):
    response = client.get("/api/v1/health", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"


def test_request_id_is_generated_when_absent_or_unsafe(client):
    generated = client.get("/api/v1/health").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    for unsafe in ("bad id with spaces", "<script>", "x" * 200):
        response = client.get("/api/v1/health", headers={"X-Request-ID": unsafe})
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


def test_request_log_line_is_structured(client, lms_records):
    client.get("/api/v1/health", headers={"X-Request-ID": "log-1"})
    lines = [r for r in lms_records if r.name == "lms.request" and r.request_id == "log-1"]
    assert len(lines) == 1
    entry = json.loads(JsonFormatter().format(lines[0]))
    assert entry["request_id"] == "log-1"
    assert entry["method"] == "GET" and entry["path"] == "/api/v1/health"
    assert entry["status"] == 200 and entry["duration_ms"] >= 0


def test_a_default_limits_429_is_traced_and_logged(app, client, lms_records):
    """A default limit is checked in the limiter's own before_request, ahead of the route's:
    its 429 still carries the request's id and gets its log line."""
    set_default_limit(app, "1 per minute")
    try:
        path = "/api/v1/notifications/unread-count"
        client.get(path, headers={"X-Request-ID": "first-1"})  # 401: no token, but counted
        refused = client.get(path, headers={"X-Request-ID": "over-1"})
    finally:
        set_default_limit(app, None)
    assert refused.status_code == 429 and refused.headers["X-Request-ID"] == "over-1"
    lines = [r for r in lms_records if r.name == "lms.request" and r.request_id == "over-1"]
    assert [(line.status, line.path) for line in lines] == [(429, path)]


def test_secure_headers(client):
    response = client.get("/api/v1/health")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Referrer-Policy"] == "no-referrer"


def test_hsts_on_https_and_no_forced_redirect_in_tests(client):
    plain = client.get("/api/v1/health")
    assert plain.status_code == 200  # no 302 to https outside production
    secure = client.get("/api/v1/health", base_url="https://localhost")
    assert "max-age=" in secure.headers["Strict-Transport-Security"]


def test_production_forces_https():
    from app import create_app

    app = create_app("testing", overrides={"FORCE_HTTPS": True})
    client = app.test_client()
    response = client.get("/api/v1/openapi.json")
    assert response.status_code in (301, 302)
    assert response.headers["Location"].startswith("https://")
    # Load-balancer probes over plain HTTP are answered, not redirected.
    assert client.get("/api/v1/health").status_code == 200


def test_cors_allows_the_two_spas_only(client, app):
    for origin in (app.config["FRONTEND_URL_STUDENTS"], app.config["FRONTEND_URL_ADMIN"]):
        response = client.get("/api/v1/health", headers={"Origin": origin})
        assert response.headers["Access-Control-Allow-Origin"] == origin
    evil = client.get("/api/v1/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in evil.headers


def test_cors_preflight(client, app):
    origin = app.config["FRONTEND_URL_ADMIN"]
    response = client.options("/api/v1/health", headers={
        "Origin": origin, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "Authorization"})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()


def test_pagination_shape_and_cap(client, app):
    with app.app_context():
        db.session.add_all(MasterCategory(name=f"C{i}", slug=f"c{i}") for i in range(25))
        db.session.commit()
        ids = sorted(db.session.scalars(db.select(MasterCategory.id)))
    response = client.get("/api/v1/_probe/page?page=2&per_page=10")
    assert response.status_code == 200
    assert response.json["pagination"] == {"page": 2, "per_page": 10, "total": 25, "pages": 3,
                                           "has_next": True, "has_prev": True}
    assert response.json["items"] == ids[10:20]
    capped = client.get("/api/v1/_probe/page?per_page=1000").json["pagination"]
    assert capped["per_page"] == 100 and capped["pages"] == 1
    beyond = client.get("/api/v1/_probe/page?page=9").json
    assert beyond["items"] == [] and beyond["pagination"]["has_next"] is False
    assert beyond["pagination"]["total"] == 25  # no rows to carry it: counted apart
    last = client.get("/api/v1/_probe/page?page=3&per_page=10").json
    assert last["items"] == ids[20:] and last["pagination"]["total"] == 25


def test_an_empty_list_is_one_statement(client, app):
    with recorded_statements(app) as statements:
        body = client.get("/api/v1/_probe/page").json
    assert body["items"] == [] and body["pagination"]["total"] == 0
    assert len([s for s in statements if "master_categories" in s]) == 1


@pytest.mark.parametrize("query", ["page=0", "per_page=0", "page=abc", "per_page=-5"])
def test_pagination_rejects_bad_values(client, query):
    response = client.get(f"/api/v1/_probe/page?{query}")
    assert response.status_code == 422
    assert response.json["code"] == "validation_error"


def test_openapi_document_is_generated(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.json
    assert document["openapi"].startswith("3.1")
    assert "/api/v1/health" in document["paths"]
    assert "/api/v1/health/ready" in document["paths"]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_docs_page_is_html_with_its_own_csp(client):
    response = client.get("/api/v1/docs")
    assert response.status_code == 200
    assert "text/html" in response.content_type
    assert "/api/v1/openapi.json" in response.get_data(as_text=True)
    assert "script-src" in response.headers["Content-Security-Policy"]
