"""IP blocking, the admin's blocked-IP list, the input tripwire, proxies and rate-limit switches."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app import create_app
from models import AuditLog, BlockedIP, SecurityEvent, db
from utils.validators import (
    detect_sql_injection,
    detect_xss,
    normalise_email,
    normalise_phone,
    password_problems,
)

ATTACKER = {"REMOTE_ADDR": "203.0.113.66"}
# A route a blocked address is refused (health probes never are).
PROBE = "/api/v1/public/categories"


def fail_logins(client, accounts, environ=ATTACKER):
    for i in range(accounts):
        client.post("/api/v1/auth/login", json={"email": f"target{i}@example.com",
                                                "password": "Wr0ngpass1"}, environ_base=environ)


def test_failing_many_accounts_blocks_the_address(client, app):
    accounts = app.config["IP_BLOCK_MAX_ACCOUNTS"]
    fail_logins(client, accounts - 1)
    assert client.get(PROBE, environ_base=ATTACKER).status_code == 200
    client.post("/api/v1/auth/login", json={"email": "last@example.com", "password": "x1234567"},
                environ_base=ATTACKER)
    blocked = client.get(PROBE, environ_base=ATTACKER)
    assert blocked.status_code == 403 and blocked.json["code"] == "ip_blocked"
    # Every route, including ones that would otherwise 404.
    assert client.get("/api/v1/nothing-here", environ_base=ATTACKER).status_code == 403
    # Other addresses carry on.
    assert client.get("/api/v1/health").status_code == 200
    with app.app_context():
        row = db.session.scalar(select(BlockedIP))
        assert row.ip_address == ATTACKER["REMOTE_ADDR"] and row.blocked_until is not None
        assert db.session.scalar(select(func.count()).select_from(SecurityEvent)) == accounts


def test_repeated_failures_on_one_account_do_not_block_the_address(client, app):
    for _ in range(8):
        client.post("/api/v1/auth/login", json={"email": "same@example.com",
                                                "password": "Wr0ngpass1"}, environ_base=ATTACKER)
    assert client.get(PROBE, environ_base=ATTACKER).status_code == 200


def test_injection_patterns_in_free_text_are_counted_but_never_block(client, app, make_user,
                                                                     auth_headers):
    """Prose about SQL or HTML trips the patterns too: refused and counted, never blocking."""
    user = make_user()
    headers = auth_headers(user)
    writer = {"REMOTE_ADDR": "203.0.113.76"}
    trips = app.config["IP_BLOCK_MAX_UNSAFE_INPUTS"]
    for _ in range(trips + 2):
        response = client.put("/api/v1/auth/profile", headers=headers, environ_base=writer,
                              json={"bio": "To merge results, use SELECT a UNION SELECT b"})
        assert response.status_code == 422 and "bio" in response.json["details"]
    client.put("/api/v1/auth/profile", headers=headers, environ_base=writer,
               json={"headline": "<script>alert(1)</script>"})
    assert client.get(PROBE, environ_base=writer).status_code == 200
    assert client.get("/api/v1/health", environ_base=writer).status_code == 200
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(BlockedIP)) == 0
        events = list(db.session.scalars(select(SecurityEvent)))
        assert len(events) == trips + 3
        assert {(e.kind, e.ip_address) for e in events} == {("unsafe_input", "203.0.113.76")}
        assert {e.subject for e in events} == {"text:bio", "text:headline"}


def test_injection_attempts_in_structured_fields_block_the_address(client, app):
    """An injection pattern where only a structured value belongs (an e-mail, a number, a
    choice) is a high-confidence attack: enough of them block the address."""
    prober = {"REMOTE_ADDR": "203.0.113.77"}
    trips = app.config["IP_BLOCK_MAX_UNSAFE_INPUTS"]
    for n in range(trips - 1):
        response = client.get(f"/api/v1/public/get-courses?category_id={n} UNION SELECT 1",
                              environ_base=prober)
        assert response.status_code == 422 and "category_id" in response.json["details"]
    assert client.get(PROBE, environ_base=prober).status_code == 200
    response = client.post("/api/v1/auth/register", environ_base=prober, json={
        "email": "x@example.com' OR '1'='1", "password": "Whatever-1234",
        "first_name": "A", "last_name": "B"})
    assert response.status_code == 422 and "email" in response.json["details"]
    refused = client.get(PROBE, environ_base=prober)
    assert refused.status_code == 403 and refused.json["code"] == "ip_blocked"
    # Health probes are never refused: a block cannot take an instance out of its balancer.
    assert client.get("/api/v1/health", environ_base=prober).status_code == 200
    assert client.get("/api/v1/health/ready", environ_base=prober).status_code == 200
    with app.app_context():
        subjects = [e.subject for e in db.session.scalars(
            select(SecurityEvent).order_by(SecurityEvent.id))]
        assert subjects == ["category_id"] * (trips - 1) + ["email"]
        row = db.session.scalar(select(BlockedIP))
        assert row.ip_address == "203.0.113.77"


def test_block_expires(client, app):
    import time
    from datetime import timedelta

    from utils.pipeline import redis_client
    from utils.pipeline import blocked_ips
    from utils.helpers import utcnow

    ip = "203.0.113.88"
    with app.app_context():
        blocked_ips.block_ip(ip, seconds=3600, reason="test")
        redis = redis_client.get()
        if redis is not None:  # Redis mirrors the block, with the block's lifetime as TTL
            key = f"lms:blocked-ip:{ip}"
            assert 3590 <= redis.ttl(key) <= 3600
    assert client.get(PROBE, environ_base={"REMOTE_ADDR": ip}).status_code == 403
    # An hour later: the database's blocked_until has passed, and the mirror's key expired.
    with app.app_context():
        row = db.session.scalar(select(BlockedIP))
        row.blocked_until = utcnow() - timedelta(seconds=1)
        db.session.commit()
        if redis is not None:
            redis.pexpire(key, 1)
            time.sleep(0.05)
    assert client.get(PROBE, environ_base={"REMOTE_ADDR": ip}).status_code == 200


# --- admin routes -----------------------------------------------------------------------------

def test_admin_lists_blocks_and_lifts_one(client, app, make_user, auth_headers):
    admin = auth_headers(make_user("admin"))
    fail_logins(client, app.config["IP_BLOCK_MAX_ACCOUNTS"])
    listing = client.get("/api/v1/admin/blocked-ips", headers=admin)
    assert listing.status_code == 200
    assert [b["ip_address"] for b in listing.json["blocked_ips"]] == [ATTACKER["REMOTE_ADDR"]]
    assert listing.json["pagination"]["total"] == 1
    lifted = client.delete(f"/api/v1/admin/blocked-ips/{ATTACKER['REMOTE_ADDR']}", headers=admin)
    assert lifted.status_code == 200
    assert client.get(PROBE, environ_base=ATTACKER).status_code == 200
    assert client.get("/api/v1/admin/blocked-ips", headers=admin).json["blocked_ips"] == []
    with app.app_context():
        entry = db.session.scalar(select(AuditLog))
        assert entry.action == "blocked_ip.delete"
        assert entry.details == {"ip_address": ATTACKER["REMOTE_ADDR"]}


def test_admin_blocks_an_address_by_hand(client, app, make_user, auth_headers):
    admin_id = make_user("admin")
    response = client.post("/api/v1/admin/blocked-ips", headers=auth_headers(admin_id),
                           json={"ip_address": "198.51.100.23", "reason": "scraping",
                                 "duration_seconds": 600})
    assert response.status_code == 201
    assert response.json["blocked_ip"]["reason"] == "scraping"
    assert client.get(PROBE, environ_base={"REMOTE_ADDR": "198.51.100.23"}).status_code == 403
    with app.app_context():
        assert db.session.scalar(select(BlockedIP.created_by_id)) == admin_id
        assert db.session.scalar(select(AuditLog.action)) == "blocked_ip.create"


def test_admin_block_validates_the_address(client, make_user, auth_headers):
    response = client.post("/api/v1/admin/blocked-ips", headers=auth_headers(make_user("admin")),
                           json={"ip_address": "not-an-ip"})
    assert response.status_code == 422 and "ip_address" in response.json["details"]


def test_lifting_an_unknown_block_is_404(client, make_user, auth_headers):
    response = client.delete("/api/v1/admin/blocked-ips/192.0.2.200",
                             headers=auth_headers(make_user("admin")))
    assert response.status_code == 404


@pytest.mark.parametrize("method, path", [
    ("get", "/api/v1/admin/blocked-ips"),
    ("post", "/api/v1/admin/blocked-ips"),
    ("delete", "/api/v1/admin/blocked-ips/192.0.2.1"),
])
def test_blocked_ip_routes_are_admin_only(client, make_user, auth_headers, method, path):
    kwargs = {"json": {"ip_address": "192.0.2.1"}} if method == "post" else {}
    assert getattr(client, method)(path, **kwargs).status_code == 401
    for role in ("student", "instructor"):
        response = getattr(client, method)(path, headers=auth_headers(make_user(role)), **kwargs)
        assert response.status_code == 403 and response.json["code"] == "role_required"


# --- proxies and switches ---------------------------------------------------------------------

def test_client_address_comes_from_the_socket_unless_proxies_are_trusted(app):
    untrusted = create_app("testing", overrides={"SQLALCHEMY_DATABASE_URI": "sqlite://"})
    trusted = create_app("testing", overrides={"SQLALCHEMY_DATABASE_URI": "sqlite://",
                                               "TRUSTED_PROXIES": ["10.0.0.0/8"]})
    from flask import request

    from utils.pipeline.client_address import client_ip

    headers = {"X-Forwarded-For": "198.51.100.50"}
    with untrusted.test_client() as c:
        c.get("/api/v1/health", headers=headers, environ_base={"REMOTE_ADDR": "10.0.0.1"})
        assert client_ip() == "10.0.0.1"
        assert "X-Forwarded-For" not in request.headers  # removed: nothing else can read it
    with trusted.test_client() as c:
        c.get("/api/v1/health", headers=headers, environ_base={"REMOTE_ADDR": "10.0.0.1"})
        assert client_ip() == "198.51.100.50"


def test_rate_limiting_can_be_turned_off(app):
    from utils.extensions import limiter

    # Flask-Limiter keeps `enabled` on its one instance (one app per process in production);
    # put it back for the rest of the suite.
    try:
        quiet = create_app("testing", overrides={"SQLALCHEMY_DATABASE_URI": "sqlite://",
                                                 "RATELIMIT_ENABLED": False})
        with quiet.app_context():
            db.create_all()
        c = quiet.test_client()
        statuses = [c.post("/api/v1/auth/password-reset/request",
                           json={"email": "a@example.com"}).status_code for _ in range(6)]
    finally:
        limiter.enabled = True
    assert statuses == [200] * 6


def test_rate_limit_is_configurable(app, client):
    previous = app.config["RATE_LIMIT_PASSWORD_RESET_REQUEST"]
    app.config["RATE_LIMIT_PASSWORD_RESET_REQUEST"] = "1 per minute"
    try:
        first = client.post("/api/v1/auth/forgot-password", json={"email": "a@example.com"})
        second = client.post("/api/v1/auth/forgot-password", json={"email": "a@example.com"})
    finally:
        app.config["RATE_LIMIT_PASSWORD_RESET_REQUEST"] = previous
    assert first.status_code == 200
    assert second.status_code == 429 and second.json["code"] == "rate_limited"
    assert int(second.headers["Retry-After"]) <= 60


# --- validators -------------------------------------------------------------------------------

ORDINARY = ["O'Brien", "C# & SQL: select the best index", "Tom & Jerry <3", "5 > 3 and 2 < 4",
            "I love it; drop me a line", "Don't -- panic", "Learn UNION types",
            "update your profile; insert a photo", "Rock 'n' roll -- forever",
            "Use the onerror handler in JS", "مرحبا بالعالم", "Zoë Ñúñez", "👩‍💻 coder"]
HOSTILE = ["' OR '1'='1", "admin'--", "1; DROP TABLE users", "1 UNION SELECT password FROM users",
           "x'; DELETE FROM users", "a' or 1=1 #", "x' AND sleep(5)", "1 AND pg_sleep(5)",
           "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "javascript:alert(1)",
           "<svg/onload=alert(1)>", "<iframe src=//evil>", "＜script＞alert(1)＜/script＞"]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_passes(text):
    assert not detect_sql_injection(text) and not detect_xss(text)


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_is_caught(text):
    assert detect_sql_injection(text) or detect_xss(text)


def test_phone_and_email_normalisation():
    assert normalise_phone("+44 20 7946 0958") == "+442079460958"
    assert normalise_email("  Mixed.Case@Example.ORG ") == "mixed.case@example.org"
    for bad in ("020 7946 0958", "+999 1", "+1 abc"):
        with pytest.raises(ValueError):
            normalise_phone(bad)
    with pytest.raises(ValueError):
        normalise_email("two@@example.com")


def test_password_problems_name_each_rule():
    assert password_problems("Good3nough") == []
    assert password_problems("a1") == ["must be at least 8 characters long"]
    assert "must not be your e-mail address" in password_problems("jane1234", "jane1234@x.org")
    assert password_problems("x" * 127 + "1") == []
    assert "must be at most 128 characters long" in password_problems("x" * 128 + "1")
