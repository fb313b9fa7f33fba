"""Dependency faults against real servers the test starts itself.

Redis stopping during traffic — the policy: rate limits fall back to per-process memory
(Flask-Limiter's in-memory fallback), the JWT blocklist and IP blocks fall back to the
database (every revocation is also written there), readiness reports 503, and no request
answers 500. The test runs its own redis-server on a free port, so stopping it disturbs
nothing else.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from app import create_app
from models import User, db
from tests.conftest import require_service
from utils.extensions import limiter


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def own_redis(tmp_path):
    binary = require_service("redis-server (for the fault tests)", shutil.which("redis-server"))
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        pytest.fail("redis-server did not start")
    yield process, f"redis://127.0.0.1:{port}/0"
    process.kill()
    process.wait(timeout=10)


@pytest.fixture
def faulty_app(app, own_redis):
    process, url = own_redis
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    fault_app = create_app("testing", overrides={
        "SQLALCHEMY_DATABASE_URI": uri, "REDIS_URL": url, "RATELIMIT_STORAGE_URI": url,
        "RATE_LIMIT_LOGIN": "3 per minute"})
    with fault_app.app_context():
        if uri == "sqlite://":
            db.create_all()  # an in-memory database of this app's own
        user = User(email="faults@example.com", role="student", first_name="Fault",
                    last_name="Tolerant", is_active=True)
        user.set_password("Passw0rd!")
        db.session.add(user)
        db.session.commit()
    yield fault_app, process
    with fault_app.app_context():
        if uri == "sqlite://":
            db.drop_all()
        db.session.remove()
    # Flask-Limiter keeps one storage per process, replaced by every init_app: point it back
    # at the suite's own storage (the dead Redis would fail the next test's limiter.reset()).
    create_app("testing", overrides={"SQLALCHEMY_DATABASE_URI": uri})
    # ...and leave the in-memory fallback mode it entered when Redis died (it would only
    # leave it after a backed-off health check, keeping counts that limiter.reset() misses).
    limiter._storage_dead = False


def _login(client, address: str):
    return client.post("/api/v1/auth/login", environ_base={"REMOTE_ADDR": address},
                       json={"email": "faults@example.com", "password": "Passw0rd!"})


def test_redis_stopping_degrades_without_errors(faulty_app):
    fault_app, redis_process = faulty_app
    client = fault_app.test_client()
    ready = client.get("/api/v1/health/ready")
    assert ready.status_code == 200 and ready.json["checks"]["redis"] == "ok"

    kept = _login(client, "198.51.100.10").json["access_token"]
    revoked = _login(client, "198.51.100.11").json["access_token"]
    assert client.post("/api/v1/auth/logout",
                       headers={"Authorization": f"Bearer {revoked}"}).status_code == 200

    redis_process.kill()
    redis_process.wait(timeout=10)

    ready = client.get("/api/v1/health/ready")
    assert ready.status_code == 503
    assert ready.json["checks"] == {"database": "ok", "redis": "unavailable"}
    # The blocklist falls back to the database: the revoked token stays revoked, the other works.
    assert client.get("/api/v1/auth/profile",
                      headers={"Authorization": f"Bearer {kept}"}).status_code == 200
    refused = client.get("/api/v1/auth/profile", headers={"Authorization": f"Bearer {revoked}"})
    assert refused.status_code == 401 and refused.json["code"] == "token_revoked"
    # A logout while Redis is down still revokes (the database copy).
    assert client.post("/api/v1/auth/logout",
                       headers={"Authorization": f"Bearer {kept}"}).status_code == 200
    assert client.get("/api/v1/auth/profile",
                      headers={"Authorization": f"Bearer {kept}"}).status_code == 401
    # Rate limits fall back to memory: still enforced, never a 500.
    statuses = [_login(client, "198.51.100.12").status_code for _ in range(5)]
    assert 500 not in statuses
    assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
    # Public reads carry on.
    assert client.get("/api/v1/public/get-courses").status_code == 200
