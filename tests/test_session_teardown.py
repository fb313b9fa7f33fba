"""The request's session is closed by our own teardown (utils/middleware.py, `_close_session`):
a connection the database dropped after the view's last statement (a restart, a failover) made
the close's ROLLBACK raise out of the app, and gunicorn sent its own HTML 500 in place of the
view's answer (seen once in tests/test_postgres_restart.py's traffic, under CI). The answer
the view made goes out, what it committed stays, and the pool opens a new connection."""
from __future__ import annotations

import pytest
from sqlalchemy import select, text

from models import MasterCategory, db
from tests.support.assertions import ok


def test_a_connection_lost_before_the_teardown_leaves_the_answer_and_the_commit(app, client):
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        pytest.skip("ending a backend is PostgreSQL's; the SQLite pass has none")
    answer = client.post("/api/v1/_probe/lost-connection")
    body = ok(answer)
    assert answer.content_type == "application/json" and body["backend"] > 0
    with app.app_context():
        # A new connection: the lost one was not handed out again.
        assert db.session.execute(text("SELECT pg_backend_pid()")).scalar() != body["backend"]
        assert db.session.scalar(select(MasterCategory.slug)) == "kept-before-the-loss"
    ok(client.get("/api/v1/public/categories"))  # the next request is served as usual
