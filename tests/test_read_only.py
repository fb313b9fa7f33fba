"""Views marked @read_only (utils/read_only.py) read without a transaction block on PostgreSQL,
refuse any write or locking read on every database, and hand their connection back to the pool
as it was."""
from __future__ import annotations

import pytest
from flask import g
from sqlalchemy import event, insert, select, text

from models import Notification, db
from tests.support.assertions import ok
from tests.support.queries import sent_queries
from utils import read_only
from utils.read_only import PREPARE, ReadOnlyViolation, is_read, statement_commits_alone

API = "/api/v1"
UNREAD = f"{API}/notifications/unread-count"


@pytest.fixture(autouse=True)
def room_to_prepare(monkeypatch):
    """The session's pooled connections keep what the tests before prepared, and past
    PREPARED_KEPT a statement runs as sent: these tests, which look for their statements
    prepared, get room for them whatever ran before."""
    monkeypatch.setattr(read_only, "PREPARED_KEPT", read_only.PREPARED_KEPT + 10_000)


@pytest.fixture
def modes(app):
    """(statement start, whether its connection served a read-only view, psycopg2's
    autocommit) for each statement the app sends."""
    seen: list[tuple[str, bool, bool | None]] = []

    def record(connection, _cursor, statement, *_args):
        dbapi = connection.connection.dbapi_connection
        seen.append((" ".join(statement.split())[:40], bool(connection.info.get("lms_read_only")),
                     getattr(dbapi, "autocommit", None) if hasattr(dbapi, "get_backend_pid")
                     else None))

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def test_a_marked_read_runs_without_a_block_and_a_write_after_it_in_one(
        app, client, make_user, auth_headers, modes):
    user = make_user()
    headers = auth_headers(user)
    with app.app_context():
        db.session.execute(insert(Notification), [
            {"user_id": user, "kind": "system", "title": f"N{n}", "message": "m"}
            for n in range(2)])
        db.session.commit()
    client.get(UNREAD, headers=headers)  # warm: the user's mirror entry
    modes.clear()
    assert ok(client.get(UNREAD, headers=headers)) == {"unread_count": 2}
    reads = [m for m in modes if "notifications" in m[0]]
    assert reads and all(flagged for _, flagged, _ in reads)
    postgres = app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql")
    if postgres:
        assert all(autocommit is True for _, _, autocommit in reads)
    # The next request's write takes a pooled connection in a block again, and commits.
    modes.clear()
    assert ok(client.put(f"{API}/notifications/read-all", headers=headers))["updated"] == 2
    writes = [m for m in modes if m[0].startswith("UPDATE notifications")]
    assert writes and not any(flagged for _, flagged, _ in writes)
    if postgres:
        assert all(autocommit is False for _, _, autocommit in writes)
    assert ok(client.get(UNREAD, headers=headers)) == {"unread_count": 0}
    with app.app_context():
        assert db.session.scalar(select(Notification.is_read).where(
            Notification.user_id == user).limit(1)) is True


def test_a_write_or_a_lock_on_a_read_only_connection_is_refused(app, make_user):
    user = make_user()
    with app.test_request_context("/"):
        g.read_only_view = True
        connection = db.session.connection()
        assert connection.info.get("lms_read_only") is True
        assert connection.execute(text("SELECT 1")).scalar() == 1
        with pytest.raises(ReadOnlyViolation):
            connection.execute(insert(Notification).values(
                user_id=user, kind="system", title="sneaked in", message="m"))
        if connection.dialect.name == "postgresql":
            with pytest.raises(ReadOnlyViolation):
                connection.execute(select(Notification.id).with_for_update())
        db.session.rollback()
        db.session.remove()
        g.read_only_view = False
    with app.app_context():
        assert db.session.scalar(select(Notification.id).where(
            Notification.title == "sneaked in")) is None


@pytest.mark.parametrize("statement, reads", [
    ("SELECT 1", True),
    ("  select count(*) from t", True),
    ("-- note\nSELECT a FROM t", True),
    ("/* hint */ SELECT a FROM t", True),
    ("EXPLAIN (FORMAT JSON) SELECT * FROM t", True),
    ("WITH x AS (SELECT 1) SELECT * FROM x", True),
    ("SELECT updated_at, last_update FROM t", True),
    ("WITH x AS (DELETE FROM t RETURNING id) SELECT * FROM x", False),
    ("WITH x AS (SELECT 1) UPDATE t SET a = 1", False),
    ("SELECT * FROM t FOR UPDATE", False),
    ("SELECT * FROM t FOR NO KEY UPDATE OF t", False),
    ("SELECT * FROM t for share", False),
    ("SELECT nextval('s')", False),
    ("SELECT pg_advisory_xact_lock(1)", False),
    ("SELECT set_config('a.b', 'c', true)", False),
    ("INSERT INTO t VALUES (1)", False),
    ("UPDATE t SET a = 1", False),
    ("DELETE FROM t", False),
    ("SAVEPOINT a", False),
    ("SET LOCAL statement_timeout = 0", False),
])
def test_what_counts_as_a_read(statement, reads):
    assert is_read(statement) is reads


def postgres_only(app) -> None:
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        pytest.skip("prepared statements are PostgreSQL's (psycopg2); the SQLite pass has none")


@pytest.fixture
def executed(app):
    """What psycopg2 actually sent for each statement (its cursor's `query`)."""
    with sent_queries(app) as sent:
        yield sent


def test_a_marked_read_runs_prepared_and_answers_the_same(app, client, make_user, auth_headers,
                                                          executed):
    postgres_only(app)
    user = make_user()
    headers = auth_headers(user)
    with app.app_context():
        db.session.execute(insert(Notification), [
            {"user_id": user, "kind": "system", "title": "Hello", "message": "m"}])
        db.session.commit()
    first = ok(client.get(f"{API}/notifications", headers=headers))
    executed.clear()
    again = ok(client.get(f"{API}/notifications", headers=headers))
    assert again == first and again["notifications"][0]["title"] == "Hello"
    assert any(q.startswith("EXECUTE lms_") for q in executed), executed
    # A write is never prepared: it runs in its block as sent.
    executed.clear()
    ok(client.put(f"{API}/notifications/read-all", headers=headers))
    assert any(q.lstrip().startswith("UPDATE notifications") for q in executed), executed


def test_prepared_reads_fall_back_and_recover(app, make_user):
    postgres_only(app)
    make_user()
    with app.test_request_context("/"):
        g.read_only_view = True
        connection = db.session.connection()
        # A parameter PostgreSQL cannot type: sent as it is, and remembered so.
        assert connection.execute(text("SELECT :x IS NULL"), {"x": None}).scalar() is True
        kept = connection.info["lms_prepared"]
        assert [name for sql, name in kept.items() if sql.startswith("SELECT %(x)s IS NULL")] \
            == [None]
        count = text("SELECT count(*) FROM users WHERE id > :low")
        assert connection.execute(count, {"low": 0}).scalar() == 1
        assert [name for sql, name in kept.items() if "count(*) FROM users" in sql][0]
        # The server forgets every prepared statement (DISCARD ALL, as a pooler may): the next
        # read prepares again and answers.
        with connection.connection.dbapi_connection.cursor() as cursor:
            cursor.execute("DEALLOCATE ALL")
        assert connection.execute(count, {"low": 0}).scalar() == 1
        with connection.connection.dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_prepared_statements "
                           "WHERE statement LIKE '%FROM users WHERE id >%'")
            prepared = cursor.fetchone()[0]
        assert prepared == 1
        db.session.remove()
        g.read_only_view = False


def test_prepared_reads_can_be_turned_off(app, make_user, auth_headers):
    postgres_only(app)
    from app import create_app
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    other = create_app("testing", overrides={"DATABASE_PREPARED_STATEMENTS": False,
                                             "SQLALCHEMY_DATABASE_URI": uri})
    headers = auth_headers(make_user())
    seen: list[str] = []
    try:
        with other.app_context():
            event.listen(db.engine, "after_cursor_execute",
                         lambda _c, cursor, *_a: seen.append(cursor.query.decode()))
        other_client = other.test_client()
        for _ in range(2):
            assert ok(other_client.get(UNREAD, headers=headers)) == {"unread_count": 0}
        assert seen and not any(q.startswith(("EXECUTE", "PREPARE")) for q in seen)
    finally:
        with other.app_context():
            db.engine.dispose()
        create_app("testing", overrides={"SQLALCHEMY_DATABASE_URI": uri})  # the shared limiter


def test_a_plan_that_no_longer_fits_its_table_is_prepared_again(app):
    """A migration that changes a column's type makes PostgreSQL refuse the prepared plan
    ("cached plan must not change result type"): the read prepares it again and answers."""
    postgres_only(app)
    with app.test_request_context("/"):
        g.read_only_view = True
        connection = db.session.connection()
        raw = connection.connection.dbapi_connection
        with raw.cursor() as cursor:
            cursor.execute("CREATE TEMPORARY TABLE lms_plan_probe (a integer)")
            cursor.execute("INSERT INTO lms_plan_probe VALUES (7)")
        probe = text("SELECT a FROM lms_plan_probe WHERE a > :low")
        assert connection.execute(probe, {"low": 0}).scalar() == 7
        assert connection.execute(probe, {"low": 0}).scalar() == 7  # as EXECUTE
        with raw.cursor() as cursor:
            cursor.execute("ALTER TABLE lms_plan_probe ALTER COLUMN a TYPE numeric")
        assert connection.execute(probe, {"low": 0}).scalar() == 7
        assert [n for sql, n in connection.info["lms_prepared"].items()
                if "lms_plan_probe" in sql][0]  # prepared again, not given up
        with raw.cursor() as cursor:
            cursor.execute("DROP TABLE lms_plan_probe")
        db.session.remove()
        g.read_only_view = False


def test_hostile_search_text_reads_the_same_prepared(app, client, make_user, auth_headers,
                                                     executed):
    """Values travel as EXECUTE's arguments, quoted by psycopg2 as before: quotes, percent
    signs, backslashes and an injection attempt find what they find as text, nothing more."""
    postgres_only(app)
    from models import Course

    teacher = make_user("instructor")
    signed_in = auth_headers(make_user())  # no cached copy: each search reads the database
    with app.app_context():
        db.session.add(Course(title="Rates 100% o'clock \\ path", slug="hostile-probe",
                              instructor_id=teacher, status="published", price=0))
        db.session.commit()
    for text_, found in (("100%", 1), ("o'clock", 1), ("\\ path", 1),
                         ("x' OR '1'='1", 0), ("1%' ; DROP TABLE courses; --", 0)):
        answers = []
        for _ in range(2):  # the first prepares the statement, the second only executes it
            executed.clear()
            answers.append(ok(client.get(f"{API}/public/courses/search",
                                         query_string={"q": text_}, headers=signed_in)))
        assert answers[0] == answers[1], text_
        titles = [c["title"] for c in answers[1]["courses"]]
        assert titles == (["Rates 100% o'clock \\ path"] if found else []), (text_, titles)
        assert any(q.startswith("EXECUTE lms_") for q in executed), executed
    with app.app_context():
        assert db.session.scalar(select(Course.id).where(Course.slug == "hostile-probe"))


def test_a_statement_that_commits_alone(app, make_user, executed):
    """`statement_commits_alone`: a pooled connection in autocommit, where a statement marked
    PREPARE runs prepared and an unmarked one as sent; each is committed as it returns (another
    connection sees it at once); the switch is undone before the connection goes back. Marked
    inside a transaction block, a statement is sent as it is (a failed EXECUTE would abort the
    block)."""
    postgres_only(app)
    user = make_user()
    rename = text("UPDATE users SET first_name = :name WHERE id = :id RETURNING first_name")
    with app.app_context():
        with statement_commits_alone(db.engine) as connection:
            dbapi_connection = connection.connection.dbapi_connection
            assert dbapi_connection.autocommit is True
            for name in ("Ada", "Grace"):
                assert connection.execute(rename.execution_options(**{PREPARE: True}),
                                          {"name": name, "id": user}).scalar() == name
            assert executed[-1].startswith("EXECUTE lms_"), executed
            with db.engine.connect() as other:  # committed already: no transaction is open
                assert other.execute(text("SELECT first_name FROM users WHERE id = :id"),
                                     {"id": user}).scalar() == "Grace"
            connection.execute(rename, {"name": "Edsger", "id": user})
            assert executed[-1].startswith("UPDATE users"), executed
        assert dbapi_connection.autocommit is False

        executed.clear()
        db.session.execute(rename.execution_options(**{PREPARE: True}),
                           {"name": "Barbara", "id": user})
        assert executed[-1].startswith("UPDATE users"), executed
        db.session.rollback()
        assert db.session.execute(text("SELECT first_name FROM users WHERE id = :id"),
                                  {"id": user}).scalar() == "Edsger"
