"""Fixtures (per STYLE.md): `app` (session scope, schema created once), a clean database and
Redis after every test, `client`, `runner`, and factories that return ids or headers rather
than ORM objects held across requests.

The suite runs on PostgreSQL and Redis when TEST_DATABASE_URL / TEST_REDIS_URL are set, else on
SQLite with the embedded defaults. Tests that need PostgreSQL itself (migrations, races) use
TEST_POSTGRES_URL (default: TEST_DATABASE_URL when that is PostgreSQL). Where a service is not
configured those tests skip, except under CI=true, where a missing service fails the run.
"""
from __future__ import annotations

import logging
import os
import uuid
from datetime import timedelta

import pytest
from flask_jwt_extended import create_access_token, create_refresh_token
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app import create_app
from config import normalise_database_url
from models import User
from models import db as _db
from tests.support import probe_routes
from utils import tallies
from utils.extensions import limiter

CI = os.environ.get("CI", "").lower() == "true"


def pytest_addoption(parser):
    group = parser.getgroup("lms")
    # The payment lifecycle state machine (tests/test_payment_lifecycle.py): its CI cost is
    # bounded by these defaults; raise them for a deeper search, e.g.
    # make test PYTEST_ARGS='tests/test_payment_lifecycle.py --lifecycle-examples=400'
    group.addoption("--lifecycle-examples", type=int, default=25,
                    help="Hypothesis examples (runs of the machine) in the payment lifecycle test")
    group.addoption("--lifecycle-steps", type=int, default=30,
                    help="steps per run of the payment lifecycle state machine")


def postgres_url() -> str | None:
    url = os.environ.get("TEST_POSTGRES_URL")
    if url:
        return url
    url = os.environ.get("TEST_DATABASE_URL", "")
    return url if url.startswith(("postgres://", "postgresql")) else None


def redis_url() -> str | None:
    return os.environ.get("TEST_REDIS_URL") or None


def require_service(name: str, url: str | None) -> str:
    """The URL of a service a test needs; skip without it, but never under CI."""
    if url:
        return url
    message = f"{name} is not configured for tests"
    if CI:
        pytest.fail(f"{message}, and CI=true forbids skipping: set it in .ci/run")
    pytest.skip(message)


# Tests that bring their own servers or need PostgreSQL whatever the suite's database, or that
# read only files and start app processes on a database they name themselves: the same whether
# the suite runs on SQLite or PostgreSQL, so CI runs them in one pass only.
SERVICE_MODULES = {"test_multiworker", "test_two_hosts", "test_webhook_concurrency",
                   "test_postgres_restart", "test_metrics_gunicorn", "test_proxy",
                   "test_worker_health", "test_money_races",
                   "test_deployment_files", "test_architecture", "test_config",
                   "test_error_reporting", "test_production_headers"}
# contract_tools (tests/test_openapi_contract.py): node tools whose result is the same in
# every pass.
SERVICE_FIXTURES = {"postgres_app", "rq_world", "replica", "contract_tools"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module in SERVICE_MODULES or SERVICE_FIXTURES & set(getattr(item, "fixturenames",
                                                                           ())):
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session")
def app(tmp_path_factory):
    upload_root = tmp_path_factory.mktemp("uploads")
    app = create_app("testing", overrides={"UPLOAD_FOLDER": str(upload_root)})
    app.register_blueprint(probe_routes.bp, url_prefix="/api/v1/_probe")
    with app.app_context():
        _db.drop_all()
        _db.create_all()
        from utils.pipeline import redis_client, shared_state

        if redis_client.get() is not None:  # in sync from the first test, as clean_state leaves it
            redis_client.get().flushdb()
            shared_state.sync()
    yield app
    with app.app_context():
        _db.session.remove()
        _db.drop_all()
        _db.engine.dispose()


def _truncate_all(app) -> None:
    """Empty every table. DELETE, not TRUNCATE: on PostgreSQL a TRUNCATE of 25 tables costs
    close to a second (file operations per table), a DELETE of a few rows a millisecond."""
    with app.app_context():
        _db.session.remove()
        with _db.engine.begin() as conn:
            for table in reversed(_db.metadata.sorted_tables):
                if table.name != tallies.TABLE:
                    conn.execute(table.delete())
            # Last: the deletes above append to it (PostgreSQL's triggers, utils/tallies.py).
            conn.execute(_db.metadata.tables[tallies.TABLE].delete())


@pytest.fixture(autouse=True)
def clean_state(app):
    """Every test starts from an empty database, an empty Redis test db and fresh limits,
    switched on as the session's app has them."""
    yield
    _truncate_all(app)
    # Flask-Limiter keeps `enabled` on its one instance (one app per process in production):
    # an app a test built with RATELIMIT_ENABLED=False (the payment lifecycle's) switched the
    # limits off for the session's app too, and a later test of a limit saw no refusal.
    limiter.enabled = bool(app.config.get("RATELIMIT_ENABLED", True))
    with app.app_context():
        limiter.reset()
        from utils.pipeline import redis_client, shared_state

        client = redis_client.get()
        if client is not None:
            client.flushdb()
            # A running deployment's Redis mirror is in sync; start every test from there (the
            # re-sync after Redis lost its data has its own tests).
            shared_state.sync(client)


@pytest.fixture
def postgres_app(app):
    """An app on PostgreSQL, for races that need real row locks: the session app when the
    suite already runs there, else a scratch database of its own, dropped (FORCE) afterwards.
    Skips without TEST_POSTGRES_URL, except under CI."""
    url = require_service("PostgreSQL (TEST_POSTGRES_URL)", postgres_url())
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        yield app  # clean_state empties it after the test
        return
    server = make_url(normalise_database_url(url))
    name = f"lms_scratch_{uuid.uuid4().hex[:10]}"
    root = create_engine(server, isolation_level="AUTOCOMMIT")
    with root.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        scratch = create_app("testing", overrides={
            "SQLALCHEMY_DATABASE_URI": server.set(database=name).render_as_string(
                hide_password=False),
            "UPLOAD_FOLDER": app.config["UPLOAD_FOLDER"]})
        with scratch.app_context():
            _db.create_all()
        try:
            yield scratch
        finally:
            with scratch.app_context():
                _db.session.remove()
                _db.engine.dispose()
    finally:
        with root.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        root.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def make_user(app):
    """make_user(role="student", **fields) -> user id. The password is "Passw0rd!"."""
    counter = {"n": 0}

    def _make(role: str = "student", password: str = "Passw0rd!", **fields) -> int:
        counter["n"] += 1
        n = counter["n"]
        values = {
            "email": f"{role}{n}@example.com",
            "first_name": role.capitalize(),
            "last_name": f"Number{n}",
            "role": role,
            "is_active": True,
            "is_email_verified": True,
        }
        values.update(fields)
        with app.app_context():
            user = User(**values)
            user.set_password(password)
            _db.session.add(user)
            _db.session.commit()
            return user.id

    return _make


@pytest.fixture
def auth_headers(app):
    """auth_headers(user_id, refresh=False, expires=None) -> {"Authorization": "Bearer ..."}."""

    def _headers(user_id: int, refresh: bool = False, expires: timedelta | None = None) -> dict:
        with app.app_context():
            user = _db.session.get(User, user_id)
            kwargs = {"expires_delta": expires} if expires is not None else {}
            token = (create_refresh_token if refresh else create_access_token)(user, **kwargs)
        return {"Authorization": f"Bearer {token}"}

    return _headers


@pytest.fixture
def app_ctx(app):
    """An app context for setup and assertions only (never around client requests)."""
    with app.app_context():
        yield


@pytest.fixture
def mailbox():
    """What the console mail backend logged (lms.email): the mails a test sent."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect()
    logging.getLogger("lms.email").addHandler(handler)
    yield messages
    logging.getLogger("lms.email").removeHandler(handler)
