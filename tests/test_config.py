"""Configuration: database URL normalisation, `.env`-style values, production's refusal to start
without real secrets, the development defaults, and the testing configuration."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from config import (
    ConfigError,
    ProductionConfig,
    TestingConfig,
    env,
    env_int,
    normalise_database_url,
)
from tests.support.signing import signing_settings

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION_SECRETS = ("SESSION_SECRET", "JWT_SECRET_KEY", "DATABASE_URL", "PUBLIC_BASE_URL",
                      "CREDENTIAL_SIGNING_KEY", "PDF_SIGNING_KEY", "PDF_SIGNING_CERT")
SIGNING_SETTINGS = ("CREDENTIAL_SIGNING_KEY", "PDF_SIGNING_KEY", "PDF_SIGNING_CERT")


def _run_python(code: str, *, remove: tuple[str, ...] = (), **extra_env: str):
    """Run `code` in a fresh interpreter from the repository root (config reads the
    environment at import), with `remove` taken out of the environment and `extra_env` set."""
    environment = {k: v for k, v in os.environ.items() if k not in remove}
    environment.update(extra_env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=120)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ---------------------------------------------------------------------------------------------
# Environment parsing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("given, expected", [
    ("postgres://u:p@db:5432/lms", "postgresql+psycopg2://u:p@db:5432/lms"),
    ("postgresql://u:p@db:5432/lms", "postgresql+psycopg2://u:p@db:5432/lms"),
    ("postgresql+psycopg2://u:p@db:5432/lms", "postgresql+psycopg2://u:p@db:5432/lms"),
    ("sqlite:///instance/dev.db", "sqlite:///instance/dev.db"),
    ("sqlite://", "sqlite://"),
])
def test_normalise_database_url(given, expected):
    assert normalise_database_url(given) == expected


def test_env_strips_and_treats_empty_as_unset(monkeypatch):
    monkeypatch.setenv("LMS_TEST_MAX_SIZE", " 52428800 ")
    monkeypatch.setenv("LMS_TEST_EMPTY", "  ")
    monkeypatch.delenv("LMS_TEST_UNSET", raising=False)

    assert env("LMS_TEST_MAX_SIZE") == "52428800"
    assert env_int("LMS_TEST_MAX_SIZE", 1) == 52428800
    assert env("LMS_TEST_EMPTY", "fallback") == "fallback"
    assert env("LMS_TEST_UNSET", "fallback") == "fallback"


def test_env_keeps_a_secret_containing_a_hash(monkeypatch):
    monkeypatch.setenv("LMS_TEST_SECRET", "abc #def")
    assert env("LMS_TEST_SECRET") == "abc #def"


def test_dotenv_lines_lose_their_inline_comments(tmp_path):
    from dotenv import dotenv_values

    path = tmp_path / ".env"
    path.write_text('MAX_CONTENT_LENGTH=52428800  # 50MB\nSESSION_SECRET="abc #def"\n')
    values = dotenv_values(path)
    assert values["MAX_CONTENT_LENGTH"] == "52428800"
    assert values["SESSION_SECRET"] == "abc #def"


# ---------------------------------------------------------------------------------------------
# Production refuses to start without real secrets
# ---------------------------------------------------------------------------------------------


def _set_production(monkeypatch, secret, jwt_secret, database_uri,
                    public_base_url="https://lms.example.com", signing: bool = True):
    monkeypatch.setattr(ProductionConfig, "SECRET_KEY", secret)
    monkeypatch.setattr(ProductionConfig, "JWT_SECRET_KEY", jwt_secret)
    monkeypatch.setattr(ProductionConfig, "SQLALCHEMY_DATABASE_URI", database_uri)
    monkeypatch.setattr(ProductionConfig, "PUBLIC_BASE_URL", public_base_url)
    for name in SIGNING_SETTINGS:
        monkeypatch.setattr(ProductionConfig, name, signing_settings()[name] if signing else None)


def test_production_check_names_every_missing_secret(monkeypatch):
    _set_production(monkeypatch, None, "", "", None, signing=False)

    with pytest.raises(ConfigError) as excinfo:
        ProductionConfig.check()

    message = str(excinfo.value)
    for name in PRODUCTION_SECRETS:
        assert name in message


def test_production_check_names_only_what_is_missing(monkeypatch):
    _set_production(monkeypatch, "a-real-session-secret", None, "postgresql+psycopg2://db/lms")

    with pytest.raises(ConfigError) as excinfo:
        ProductionConfig.check()

    message = str(excinfo.value)
    assert "JWT_SECRET_KEY" in message
    assert "SESSION_SECRET" not in message and "DATABASE_URL" not in message
    assert "PUBLIC_BASE_URL" not in message


def test_production_check_passes_when_everything_is_set(monkeypatch):
    _set_production(monkeypatch, "a-real-session-secret", "a-real-jwt-secret",
                    "postgresql+psycopg2://db/lms")

    assert ProductionConfig.check() is None


def test_production_app_refuses_to_start_without_secrets():
    result = _run_python("import app; app.app", remove=PRODUCTION_SECRETS + ("APP_ENV",),
                         FLASK_ENV="production")

    assert result.returncode == 1, (result.stdout, result.stderr)
    last = _last_line(result.stderr)
    for name in PRODUCTION_SECRETS:
        assert name in last
    assert "Traceback" not in result.stderr


def test_production_app_names_only_the_missing_database_url():
    result = _run_python("import app; app.app", remove=("DATABASE_URL", "APP_ENV"),
                         FLASK_ENV="production", SESSION_SECRET="a-real-session-secret",
                         JWT_SECRET_KEY="a-real-jwt-secret",
                         PUBLIC_BASE_URL="https://lms.example.com")

    assert result.returncode == 1, (result.stdout, result.stderr)
    last = _last_line(result.stderr)
    assert "DATABASE_URL" in last
    assert "SESSION_SECRET" not in last and "JWT_SECRET_KEY" not in last
    assert "PUBLIC_BASE_URL" not in last
    assert "Traceback" not in result.stderr


def test_production_app_refuses_to_start_without_a_public_base_url():
    """Certificate QR codes and e-mailed links use PUBLIC_BASE_URL: production has no
    localhost default to fall back on, and says so in one line."""
    result = _run_python("import app; app.app", remove=("PUBLIC_BASE_URL", "APP_ENV"),
                         FLASK_ENV="production", SESSION_SECRET="a-real-session-secret",
                         JWT_SECRET_KEY="a-real-jwt-secret",
                         DATABASE_URL="postgresql://db.invalid/lms", **signing_settings())

    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["Production configuration refuses to start: set PUBLIC_BASE_URL in "
                     "the environment."], result.stderr


def test_production_public_base_url_loses_its_trailing_slash():
    result = _run_python("from config import ProductionConfig as C; print(C.PUBLIC_BASE_URL)",
                         remove=("APP_ENV",), PUBLIC_BASE_URL=" https://lms.example.com/ ")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "https://lms.example.com"


# ---------------------------------------------------------------------------------------------
# Development defaults and the testing configuration
# ---------------------------------------------------------------------------------------------


def test_development_default_needs_nothing_set():
    result = _run_python(
        "from config import DevelopmentConfig as C; "
        "print(C.SQLALCHEMY_DATABASE_URI, C.RATELIMIT_STORAGE_URI, C.MAIL_BACKEND, sep='\\n')",
        remove=("DATABASE_URL", "REDIS_URL", "RATE_LIMIT_STORAGE_URL", "MAIL_BACKEND",
                "FLASK_ENV", "APP_ENV"),
    )

    assert result.returncode == 0, result.stderr
    database_uri, ratelimit_uri, mail_backend = result.stdout.splitlines()
    assert database_uri.startswith("sqlite:///")
    assert database_uri.endswith("instance/dev.db")
    assert database_uri == f"sqlite:///{ROOT / 'instance' / 'dev.db'}"
    assert ratelimit_uri == "memory://"
    assert mail_backend == "console"


def test_testing_config(app):
    assert TestingConfig.TESTING is True
    assert TestingConfig.OTP_REQUIRED is False
    assert app.config["TESTING"] is True
    assert app.config["OTP_REQUIRED"] is False
    assert app.config["CONFIG_NAME"] == "testing"


def test_the_models_mappers_are_set_up_when_the_app_is_built():
    """Under gunicorn the app is built once in the master (preload_app): the mappers set up
    there are every worker's from the fork, not set up by each worker's first ORM statement,
    which all four workers of a cached catalog once ran at the same moment."""
    result = _run_python(
        "from models import db\n"
        "before = sum(not m.configured for m in db.Model.registry.mappers)\n"
        "from app import create_app\n"
        "create_app('testing')\n"
        "after = sum(not m.configured for m in db.Model.registry.mappers)\n"
        "print(len(db.Model.registry.mappers), before, after)")

    assert result.returncode == 0, result.stderr
    mappers, before, after = map(int, _last_line(result.stdout).split())
    assert mappers > 30  # every model of models.py
    assert before == mappers  # importing the models sets up none
    assert after == 0
