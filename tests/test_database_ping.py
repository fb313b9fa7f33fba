"""PostgreSQL connections are pinged on checkout only after sitting idle (config.ping_when_idle):
a connection the server dropped while it sat in the pool is replaced before any request sees
it; a busy worker's connections cost no ping."""
from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, text

from config import database_engine_options, normalise_database_url, ping_when_idle
from tests.conftest import postgres_url, require_service

pytestmark = pytest.mark.services  # PostgreSQL whatever the suite's database: run once per CI run
IDLE = 0.3  # seconds, for the test's engine


@pytest.fixture
def engine():
    url = normalise_database_url(require_service("PostgreSQL (TEST_POSTGRES_URL)",
                                                 postgres_url()))
    engine = create_engine(url, **{**database_engine_options(url), "pool_size": 1,
                                   "max_overflow": 0})
    ping_when_idle(engine, seconds=IDLE)
    yield engine
    engine.dispose()


def _backend(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


def test_a_connection_dropped_while_idle_is_replaced_unseen(engine):
    first = _backend(engine)
    assert _backend(engine) == first  # the pool hands the same connection back
    admin = create_engine(engine.url)
    with admin.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar()
    admin.dispose()
    time.sleep(IDLE + 0.2)  # idle past the threshold: the checkout pings, finds it dead
    assert _backend(engine) != first  # a new connection, and no error reached the caller


def test_only_an_idle_connection_is_pinged(engine):
    _backend(engine)
    real = engine.dialect.do_ping
    pings = []

    def counted(dbapi_connection):
        pings.append(1)
        return real(dbapi_connection)

    engine.dialect.do_ping = counted
    try:
        for _ in range(5):
            _backend(engine)  # returned a moment ago: no ping
        assert pings == []
        time.sleep(IDLE + 0.2)
        _backend(engine)
        assert pings == [1]
    finally:
        engine.dialect.do_ping = real


def test_sqlite_keeps_the_plain_ping():
    engine = create_engine("sqlite://", **database_engine_options("sqlite://"))
    ping_when_idle(engine)  # not PostgreSQL: nothing added
    assert engine.pool._pre_ping is True
    engine.dispose()
