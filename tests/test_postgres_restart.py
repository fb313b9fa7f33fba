"""PostgreSQL going away and coming back, against a real server the test starts itself.

The policy: a request that needs the database while it cannot serve (down, restarting, out of
connections, too slow) answers 503 in the one error shape with Retry-After, within a bounded
time, never 500 and never a hung worker; readiness says 503; when the database is back the
same worker processes answer again without a restart, and nothing written before is lost.

- The restart test runs the production configuration in a real gunicorn (two sync workers,
  schema from `flask db upgrade`) on a PostgreSQL cluster of its own (tests/support/
  postgres_server.py: initdb in a temporary directory, a free port, trust authentication), so
  stopping it disturbs nothing else. Rate limits are in memory and Redis is not configured:
  only the database fails.
- The timeout tests use the same cluster through an engine built from the production engine
  options (config.database_engine_options): a runaway statement is cut by statement_timeout,
  a server that accepts the TCP connection but never answers by connect_timeout.
- The unit tests need no cluster: a database nobody listens on, a missing SQLite table, a
  locked SQLite file, and the classification of driver errors into 503 and 500.

The cluster tests skip when the PostgreSQL server binaries are missing, and fail under CI.
"""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg2
import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from app import create_app
from config import database_engine_options
from tests.conftest import require_service
from tests.support.gunicorn_server import GunicornServer, production_env, run_flask
from tests.support.postgres_server import PostgresServer, binaries
from tests.support.standins import free_port
from utils.middleware import DATABASE_RETRY_AFTER, database_unavailable

API = "/api/v1"
PASSWORD = "Restart-passw0rd"
BOUND = 5.0  # seconds: the slowest answer allowed while the database is down
MAX_ROUNDS = 6  # batches sent, at most, until both workers have answered
_WORKER_RE = re.compile(r"Booting worker with pid: (\d+)")


# --- the private cluster ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def own_postgres():
    found = binaries()
    bindir = require_service("PostgreSQL server binaries (initdb, pg_ctl, postgres)",
                             str(found) if found else None)
    server = PostgresServer.create(Path(bindir))
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def running_postgres(own_postgres):
    """The cluster, started again if a test left it stopped."""
    if not own_postgres.running:
        own_postgres.start()
    yield own_postgres
    if not own_postgres.running:
        own_postgres.start()


@pytest.fixture(scope="module")
def server(own_postgres, tmp_path_factory):
    env = production_env(
        own_postgres.create_database("lms_restart"), None,  # no Redis: in-memory limits
        RATE_LIMIT_REGISTER="1000 per minute",
        RATE_LIMIT_LOGIN="1000 per minute",
        RATE_LIMIT_PUBLIC="1000 per minute",
        DATABASE_CONNECT_TIMEOUT="2",
        DATABASE_POOL_TIMEOUT="3",
        DATABASE_STATEMENT_TIMEOUT_MS="5000",
    )
    gunicorn = GunicornServer(env, tmp_path_factory.mktemp("gunicorn") / "gunicorn.log",
                              workers=2)
    # Booting needs no schema (readiness runs SELECT 1): migrate while gunicorn starts, each
    # on one of the two cores, rather than one after the other.
    with ThreadPoolExecutor(max_workers=1) as pool:
        upgrade = pool.submit(run_flask, env, "db", "upgrade")
        try:
            gunicorn.start(ready_timeout=30)
            upgrade.result()
        except BaseException:
            gunicorn.stop()  # harmless when start() failed and stopped it already
            raise
    try:
        assert len(gunicorn.worker_pids) == 2, gunicorn.log_tail()
        yield gunicorn
    finally:
        gunicorn.stop()


# --- helpers --------------------------------------------------------------------------------------

def _timed_send(server, method, path, **kwargs):
    started = time.monotonic()
    answer = server.send(method, path, **kwargs)
    answer.elapsed = time.monotonic() - started
    return answer


def _from_both_workers(server, method, path, *, count=6, **kwargs):
    """Batches of `count` requests (timed, each on its own connection) until both workers
    have answered, or MAX_ROUNDS."""
    answers = []
    for _ in range(MAX_ROUNDS):
        # Several at a time: a busy sync worker leaves the next connection to the other.
        with ThreadPoolExecutor(max_workers=3) as pool:
            batch = list(pool.map(lambda _: _timed_send(server, method, path, **kwargs),
                                  range(count)))
        answers += server.attribute(batch)
        if {a.pid for a in answers} >= server.worker_pids:
            break
    pids = {a.pid for a in answers}
    assert pids == server.worker_pids, (
        f"{method} {path}: answers came from pids {sorted(pids)}, "
        f"workers are {sorted(server.worker_pids)}")
    return answers


def _assert_unavailable(answer):
    assert answer.status == 503, (answer.status, answer.body)
    assert isinstance(answer.body, dict), answer.body
    assert set(answer.body) == {"error", "code"}, answer.body
    assert answer.body["code"] == "service_unavailable", answer.body
    assert isinstance(answer.body["error"], str) and answer.body["error"], answer.body
    # Ours, or later: on a rate-limited route Flask-Limiter raises it to its window's reset.
    retry_after = answer.headers.get("Retry-After", "")
    assert retry_after.isdigit() and int(retry_after) >= DATABASE_RETRY_AFTER, answer.headers
    assert answer.elapsed < BOUND, f"{answer.elapsed:.1f} s for a 503"


class Traffic(threading.Thread):
    """Profile reads, one after another on new connections, for as long as the test runs:
    requests that are in flight when the database stops and when it comes back."""

    def __init__(self, server, headers):
        super().__init__(daemon=True)
        self.server, self.headers = server, headers
        self.results: list[tuple[int, float]] = []
        self.errors: list[Exception] = []
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            try:
                answer = _timed_send(self.server, "GET", f"{API}/auth/profile",
                                     tag="traffic", headers=self.headers)
                self.results.append((answer.status, answer.elapsed))
            except (requests.RequestException, AssertionError) as exc:  # timeout, reset
                self.errors.append(exc)
            self.halt.wait(0.02)

    def finish(self):
        self.halt.set()
        self.join(timeout=30)


# --- the restart ----------------------------------------------------------------------------------

def test_database_restart_is_503_then_the_same_workers_recover(server, running_postgres):
    postgres = running_postgres
    workers = set(server.worker_pids)

    # 1. Traffic works: an account is written, read back, the catalog and readiness answer.
    email = "before-the-outage@example.com"
    created = server.send("POST", f"{API}/auth/register", json={
        "email": email, "password": PASSWORD, "first_name": "Before", "last_name": "Outage"})
    assert created.status == 201, created.body
    login = server.send("POST", f"{API}/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status == 200, login.body
    bearer = {"Authorization": f"Bearer {login.body['access_token']}"}
    for answer in _from_both_workers(server, "GET", f"{API}/auth/profile", headers=bearer):
        assert answer.status == 200 and answer.body["user"]["email"] == email, answer.body
    for answer in _from_both_workers(server, "GET", f"{API}/health/ready"):
        assert answer.status == 200, answer.body
    assert server.send("GET", f"{API}/public/get-courses").status == 200

    traffic = Traffic(server, bearer)
    traffic.start()
    try:
        time.sleep(0.3)
        # 2. PostgreSQL stops (fast: it rolls back and closes every session, as a restart or
        # a failover does). Every request that needs it is a prompt 503, on both workers.
        postgres.stop("fast")
        outage_started = len(server.log_text())
        for method, path, kwargs in (
            ("GET", f"{API}/auth/profile", {"headers": bearer}),
            ("POST", f"{API}/auth/login", {"json": {"email": email, "password": PASSWORD}}),
            ("POST", f"{API}/auth/register", {"json": {
                "email": "during@example.com", "password": PASSWORD, "first_name": "During",
                "last_name": "Outage"}}),
            ("GET", f"{API}/public/get-courses", {}),
        ):
            for answer in _from_both_workers(server, method, path, tag="outage", **kwargs):
                _assert_unavailable(answer)
        for answer in _from_both_workers(server, "GET", f"{API}/health/ready"):
            assert answer.status == 503, answer.body
            assert answer.body["checks"]["database"] == "unavailable", answer.body
            assert answer.elapsed < BOUND
        assert server.send("GET", f"{API}/health").status == 200  # alive, only not ready
        time.sleep(0.3)

        # 3. PostgreSQL is back: the same workers answer 200 at once, no restart needed.
        postgres.start()
        recovered = _from_both_workers(server, "GET", f"{API}/auth/profile", headers=bearer)
        assert [a.status for a in recovered] == [200] * len(recovered), [
            (a.status, a.body) for a in recovered]
        time.sleep(0.3)
    finally:
        traffic.finish()

    for answer in _from_both_workers(server, "GET", f"{API}/health/ready"):
        assert answer.status == 200, answer.body
    # What was written before the outage is still there, and writing works again.
    again = server.send("POST", f"{API}/auth/login", json={"email": email, "password": PASSWORD})
    assert again.status == 200, again.body
    after = server.send("POST", f"{API}/auth/register", json={
        "email": "after-the-outage@example.com", "password": PASSWORD, "first_name": "After",
        "last_name": "Outage"})
    assert after.status == 201, after.body
    assert server.send("POST", f"{API}/auth/register", json={
        "email": "during@example.com", "password": PASSWORD, "first_name": "During",
        "last_name": "Outage"}).status == 201  # the refused registration left nothing behind

    # The requests in flight across the stop and the start: 200 or 503, never anything else,
    # never slow; some of each (else the traffic did not overlap the outage).
    assert not traffic.errors, traffic.errors[:3]
    statuses = {status for status, _ in traffic.results}
    assert statuses == {200, 503}, sorted(statuses)
    slowest = max(elapsed for _, elapsed in traffic.results)
    assert slowest < BOUND, f"a request took {slowest:.1f} s"

    # Same processes: no worker died or was replaced along the way.
    log = server.log_text()
    assert {int(pid) for pid in _WORKER_RE.findall(log)} == workers, server.log_tail()
    assert '"status": 500' not in log and "unhandled error" not in log, server.log_tail()
    outage_log = log[outage_started:]
    assert "database unavailable on GET /api/v1/auth/profile" in outage_log, server.log_tail()
    # The driver's message (host, port, user) is not copied into the log.
    assert f"port {postgres.port}" not in log


# --- timeouts: a bounded wait, whatever the database does -----------------------------------------

def test_statement_timeout_cuts_a_runaway_query(running_postgres, monkeypatch):
    monkeypatch.setenv("DATABASE_STATEMENT_TIMEOUT_MS", "300")
    url = running_postgres.url()
    engine = create_engine(url, **database_engine_options(url))
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError) as caught, engine.connect() as conn:
            conn.execute(text("SELECT pg_sleep(10)"))
        assert time.monotonic() - started < 3
        assert caught.value.orig.pgcode == "57014"  # query_canceled
        assert database_unavailable(caught.value)
        with engine.connect() as conn:  # the connection is fine for the next statement
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_connect_timeout_bounds_a_server_that_does_not_answer(running_postgres, monkeypatch):
    """The postmaster frozen (SIGSTOP): the kernel still accepts the TCP connection, nobody
    answers the start-up packet. connect_timeout gives up; without it libpq waits forever."""
    monkeypatch.setenv("DATABASE_CONNECT_TIMEOUT", "2")
    url = running_postgres.url()
    engine = create_engine(url, **database_engine_options(url))
    postmaster = int((running_postgres.data / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError) as caught, engine.connect():
            pass
        elapsed = time.monotonic() - started
    finally:
        os.kill(postmaster, signal.SIGCONT)
        engine.dispose()
    assert 1.5 < elapsed < 6, f"{elapsed:.1f} s"
    assert database_unavailable(caught.value)


# --- no cluster needed --------------------------------------------------------------------------

def test_a_database_nobody_listens_on_is_503_with_retry_after():
    gone = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/nowhere"
    app = create_app("testing", overrides={
        "SQLALCHEMY_DATABASE_URI": gone,
        "SQLALCHEMY_ENGINE_OPTIONS": database_engine_options(gone), "REDIS_URL": None})
    client = app.test_client()
    try:
        for response in (client.post(f"{API}/auth/login", json={"email": "a@example.com",
                                                                 "password": PASSWORD}),
                         client.get(f"{API}/public/get-courses")):
            assert response.status_code == 503, response.get_data(as_text=True)
            assert response.get_json() == {
                "error": "The service is temporarily unavailable; try again shortly",
                "code": "service_unavailable"}
            # Ours, or later (Flask-Limiter raises it to its window's reset on limited routes).
            assert int(response.headers["Retry-After"]) >= DATABASE_RETRY_AFTER
    finally:
        with app.app_context():
            from models import db

            db.engine.dispose()


def test_a_missing_table_is_still_500_not_503():
    """A bug (here: no schema) must not pass for an outage: retrying would not help."""
    app = create_app("testing", overrides={"SQLALCHEMY_DATABASE_URI": "sqlite://",
                                           "REDIS_URL": None})
    response = app.test_client().post(f"{API}/auth/login", json={"email": "a@example.com",
                                                                 "password": PASSWORD})
    assert response.status_code == 500, response.get_data(as_text=True)
    assert response.get_json()["code"] == "internal_error"


def _locked_sqlite_error(tmp_path) -> OperationalError:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        with pytest.raises(OperationalError) as caught, engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
        return caught.value
    finally:
        engine.dispose()
        holder.close()


class _PgError(Exception):
    """A driver error carrying a SQLSTATE, as psycopg2's do (`pgcode`)."""

    def __init__(self, pgcode: str):
        super().__init__(pgcode)
        self.pgcode = pgcode


@pytest.mark.parametrize("sqlstate, expected", [
    ("57P01", True),   # admin_shutdown: the server is stopping
    ("57P03", True),   # cannot_connect_now: starting up
    ("57014", True),   # query_canceled: statement_timeout
    ("53300", True),   # too_many_connections
    ("08006", True),   # connection_failure
    ("40P01", True),   # deadlock_detected: a retry can win
    ("55P03", True),   # lock_not_available
    ("42P01", False),  # undefined_table: a bug
    ("22P02", False),  # invalid_text_representation: bad input reaching SQL
    ("P0001", False),  # raise_exception: a trigger refused
])
def test_driver_errors_by_sqlstate(sqlstate, expected):
    assert database_unavailable(DBAPIError("SELECT 1", {}, _PgError(sqlstate))) is expected


def test_driver_errors_without_sqlstate(tmp_path):
    refused = psycopg2.OperationalError("connection refused")
    assert database_unavailable(OperationalError("SELECT 1", {}, refused))
    assert database_unavailable(PoolTimeoutError("QueuePool limit reached"))
    assert database_unavailable(DBAPIError("SELECT 1", {}, Exception("closed"),
                                           connection_invalidated=True))
    assert database_unavailable(_locked_sqlite_error(tmp_path))
    assert not database_unavailable(OperationalError(
        "SELECT 1", {}, sqlite3.OperationalError("no such table: users")))
    assert not database_unavailable(IntegrityError("INSERT", {}, _PgError("23505")))
    assert not database_unavailable(RuntimeError("not a database error"))


def test_engine_options_are_bounded_on_postgresql_only(monkeypatch):
    for name, value in (("DATABASE_POOL_SIZE", "3"), ("DATABASE_MAX_OVERFLOW", "2"),
                        ("DATABASE_POOL_TIMEOUT", "4"), ("DATABASE_POOL_RECYCLE", "600"),
                        ("DATABASE_CONNECT_TIMEOUT", "2"),
                        ("DATABASE_STATEMENT_TIMEOUT_MS", "1500")):
        monkeypatch.setenv(name, value)
    options = database_engine_options("postgresql+psycopg2://u@db:5432/lms")
    assert options["pool_pre_ping"] is False  # ping_when_idle instead (below)
    assert (options["pool_size"], options["max_overflow"], options["pool_timeout"],
            options["pool_recycle"]) == (3, 2, 4, 600)
    assert options["connect_args"]["connect_timeout"] == 2
    assert options["connect_args"]["options"] == "-c statement_timeout=1500"
    # SQLite: the ping only, no psycopg2 arguments (sqlite3.connect would refuse them).
    assert database_engine_options("sqlite://") == {"pool_pre_ping": True}
    assert database_engine_options("sqlite:////srv/lms.db") == {"pool_pre_ping": True}
    # 0 turns the statement timeout off (a long migration).
    monkeypatch.setenv("DATABASE_STATEMENT_TIMEOUT_MS", "0")
    options = database_engine_options("postgresql+psycopg2://u@db:5432/lms")
    assert "options" not in options["connect_args"]
