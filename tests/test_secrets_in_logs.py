"""Secrets never reach the logs: a full account flow on the production configuration (JSON
logs, real password hashing) is run with every log record captured, and the captured text is
searched for each token, password and reset token the flow used."""
from __future__ import annotations

import logging
import re

import pytest

from app import create_app
from config import ProductionConfig
from tests.support.signing import signing_settings
from models import db
from tests.support.standins import smtp_server
from utils.middleware import JsonFormatter, RequestIdFilter

PASSWORD, NEW_PASSWORD, WRONG = "S3cret-Passw0rd", "N3w-Passw0rd-2", "Wr0ng-Passw0rd"


@pytest.fixture
def production_app(app, monkeypatch):
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    monkeypatch.setattr(ProductionConfig, "SECRET_KEY", "production-session-secret-for-test")
    monkeypatch.setattr(ProductionConfig, "JWT_SECRET_KEY", "production-jwt-secret-for-test-1234567")
    monkeypatch.setattr(ProductionConfig, "SQLALCHEMY_DATABASE_URI", uri)
    monkeypatch.setattr(ProductionConfig, "PUBLIC_BASE_URL", "https://lms.example.test")
    for name, value in signing_settings().items():
        monkeypatch.setattr(ProductionConfig, name, value)
    sink = smtp_server()
    prod = create_app("production", overrides={
        "SQLALCHEMY_DATABASE_URI": uri, "SQLALCHEMY_ENGINE_OPTIONS": {}, "FORCE_HTTPS": False,
        "REDIS_URL": app.config.get("REDIS_URL"), "OTP_REQUIRED": False, "LOG_LEVEL": "DEBUG",
        "MAIL_BACKEND": "smtp", "MAIL_SERVER": "127.0.0.1", "MAIL_PORT": sink.port,
        "MAIL_USE_TLS": False, "MAIL_SUPPRESS_SEND": False})
    with prod.app_context():
        if uri == "sqlite://":
            db.create_all()
    yield prod, sink
    sink.stop()
    with prod.app_context():
        if uri == "sqlite://":
            db.drop_all()
        db.session.remove()
    create_app("testing", overrides={"SQLALCHEMY_DATABASE_URI": uri})  # the shared limiter


@pytest.fixture
def captured_logs():
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record):
            # "mail.log" is aiosmtpd's: the test's SMTP stand-in logging what it received.
            if not record.name.startswith("mail."):
                lines.append(self.format(record))

    handler = Capture(level=logging.DEBUG)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    watched = [logging.getLogger(), logging.getLogger("lms"), logging.getLogger("werkzeug")]
    levels = [logger.level for logger in watched]
    for logger in watched:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield lines
    for logger, level in zip(watched, levels):
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_a_full_account_flow_logs_no_secret(production_app, captured_logs):
    prod, sink = production_app
    client = prod.test_client()
    secrets = {PASSWORD, NEW_PASSWORD, WRONG}

    assert client.post("/api/v1/auth/register", json={
        "email": "secret.keeper@example.com", "password": PASSWORD, "first_name": "Secret",
        "last_name": "Keeper"}).status_code == 201
    assert client.post("/api/v1/auth/login", json={
        "email": "secret.keeper@example.com", "password": WRONG}).status_code == 401
    tokens = client.post("/api/v1/auth/login", json={
        "email": "secret.keeper@example.com", "password": PASSWORD}).json
    secrets |= {tokens["access_token"], tokens["refresh_token"]}
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert client.get("/api/v1/auth/profile", headers=auth).status_code == 200
    refreshed = client.post("/api/v1/auth/refresh",
                            headers={"Authorization": f"Bearer {tokens['refresh_token']}"}).json
    secrets.add(refreshed["access_token"])
    assert client.post("/api/v1/auth/logout", headers=auth,
                       json={"refresh_token": tokens["refresh_token"]}).status_code == 200

    assert client.post("/api/v1/auth/password-reset/request",
                       json={"email": "secret.keeper@example.com"}).status_code == 200
    body = sink.messages[-1].message.get_body(("plain",)).get_content()
    reset_token = re.search(r"/reset-password/([A-Za-z0-9_\-]+)", body).group(1)
    secrets.add(reset_token)
    assert client.post("/api/v1/auth/password-reset/verify", json={
        "token": reset_token, "new_password": NEW_PASSWORD}).status_code == 200
    # Production never falls back to writing codes or mail to the log.
    prod.config["SMS_BACKEND"] = "console"
    assert client.post("/api/v1/auth/send-token",
                       json={"phone_number": "+14155550123"}).status_code == 503

    text = "\n".join(captured_logs)
    assert "POST /api/v1/auth/login" in text  # the capture saw the request log lines
    for secret in secrets:
        assert secret not in text, f"a secret reached the logs: {secret[:12]}..."
    assert "OTP for" not in text
