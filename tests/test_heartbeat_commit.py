"""A watch-time heartbeat commits without waiting for PostgreSQL's WAL flush; a completion, and
every write once HEARTBEAT_ASYNC_COMMIT is off, waits (services/enrollment_service.py). Read
from the transaction itself: a session's, with `SHOW synchronous_commit` just before it commits;
the heartbeat's single statement, which commits on its own, from the value its `set_config`
returns in the row (PostgreSQL's setting inside that statement's transaction)."""
from __future__ import annotations

import pytest
from sqlalchemy import event, select

from models import Enrollment, LessonProgress, db
from tests.support.learning import actor, build_course, complete, enroll  # noqa: F401 (actor)


@pytest.fixture
def commit_modes(app):
    """synchronous_commit as each committing transaction had it, in order. After a statement
    that committed alone, the same connection's setting is read again into `.after`: the
    statement's setting must not outlive it."""

    class Seen(list):
        after: list[str] = []

    seen = Seen()
    seen.after = []
    with app.app_context():
        engine = db.engine

    def on_commit(connection):
        if not connection.connection.dbapi_connection.autocommit:
            seen.append(connection.exec_driver_sql("SHOW synchronous_commit").scalar())

    def after_statement(connection, cursor, statement, _parameters, _context, _many):
        if not (cursor.connection.autocommit and "set_config" in statement):
            return
        names = [column.name for column in cursor.description]
        rows = cursor.fetchall()
        cursor.scroll(0, mode="absolute")  # the caller reads the rows as sent
        seen.append(rows[0][names.index("commit_mode")])
        with cursor.connection.cursor() as probe:
            probe.execute("SHOW synchronous_commit")
            seen.after.append(probe.fetchone()[0])

    event.listen(engine, "commit", on_commit)
    event.listen(engine, "after_cursor_execute", after_statement)
    yield seen
    event.remove(engine, "commit", on_commit)
    event.remove(engine, "after_cursor_execute", after_statement)


@pytest.fixture
def course(client, actor):  # noqa: F811
    owner, student = actor("instructor"), actor()
    built = build_course(client, owner, "Heartbeats", modules=(("L1", "L2"),))
    return student, enroll(client, student, built.id)["id"], built.lesson_ids


def test_only_a_watch_time_heartbeat_commits_without_waiting(app, client, course,
                                                             commit_modes):
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        pytest.skip("synchronous_commit is PostgreSQL's; SQLite commits as it always does")
    student, enrollment_id, (first, second) = course
    del commit_modes[:]
    beat = complete(client, student, enrollment_id, first, json={"watch_time_seconds": 42})
    assert beat["lesson_progress"]["watch_time_seconds"] == 42
    assert beat["lesson_progress"]["completed"] is False
    assert commit_modes == ["off"]
    assert commit_modes.after == ["on"]  # the statement's own transaction only

    done = complete(client, student, enrollment_id, first)  # a completion waits
    again = complete(client, student, enrollment_id, first, json={"watch_time_seconds": 10})
    undone = complete(client, student, enrollment_id, first, json={"completed": False})
    assert done["lesson_progress"]["completed"] is True
    assert again["lesson_progress"]["watch_time_seconds"] == 42  # the furthest point reached
    assert undone["lesson_progress"]["completed"] is False
    assert commit_modes == ["off", "on", "off", "on"]

    # The course's last lesson: completion and certificate, synchronously.
    complete(client, student, enrollment_id, first)
    finished = complete(client, student, enrollment_id, second)
    assert finished["course_completed"] is True and finished["certificate"] is not None
    assert commit_modes[-2:] == ["on", "on"]
    # A heartbeat after completion still answers the certificate (its columns found in the
    # row before the commit mode's).
    after = complete(client, student, enrollment_id, second, json={"watch_time_seconds": 5})
    assert after["certificate"]["certificate_number"] == \
        finished["certificate"]["certificate_number"]
    assert commit_modes[-1] == "off"

    assert set(commit_modes.after) == {"on"}
    # The setting was the transaction's: the pooled connection's next one waits again.
    with app.app_context():
        assert db.session.connection().exec_driver_sql(
            "SHOW synchronous_commit").scalar() == "on"
        watched = db.session.scalar(select(LessonProgress.watch_time_seconds).where(
            LessonProgress.enrollment_id == enrollment_id, LessonProgress.lesson_id == first))
        assert watched == 42


def test_a_heartbeat_to_another_student_s_enrollment_is_refused(app, client, course, actor,  # noqa: F811
                                                                commit_modes):
    """The heartbeat's own statement still finds the enrollment's owner: another student's
    watch time is 404, and writes nothing: no progress row, the enrollment's times untouched
    (its statement ran, its writes found no row they may touch; no session transaction)."""
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        pytest.skip("the heartbeat's statement is PostgreSQL's")
    _, enrollment_id, (first, _) = course
    stranger = actor()
    # The stranger's account in the Redis mirror (its first request reads the row, and a
    # heartbeat in a request that has begun a transaction takes the full path).
    client.get("/api/v1/notifications/unread-count", headers=stranger.headers)
    with app.app_context():
        before = db.session.get(Enrollment, enrollment_id)
        times = (before.started_at, before.last_accessed_at, before.updated_at)
    del commit_modes[:]
    body = complete(client, stranger, enrollment_id, first, json={"watch_time_seconds": 99},
                    status=404)
    assert body["error"] == "Enrollment not found"
    # The heartbeat's statement alone, no transaction after it (sent twice where the signed-in
    # fast path ran it before handing the 404 to Flask).
    assert commit_modes in (["off"], ["off", "off"])
    with app.app_context():
        assert db.session.scalar(select(LessonProgress.id).where(
            LessonProgress.enrollment_id == enrollment_id)) is None
        after = db.session.get(Enrollment, enrollment_id)
        assert (after.started_at, after.last_accessed_at, after.updated_at) == times


def test_turned_off_every_write_waits(app, client, course, commit_modes, monkeypatch):
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        pytest.skip("synchronous_commit is PostgreSQL's")
    monkeypatch.setitem(app.config, "HEARTBEAT_ASYNC_COMMIT", False)
    student, enrollment_id, (first, _) = course
    del commit_modes[:]
    beat = complete(client, student, enrollment_id, first, json={"watch_time_seconds": 7})
    assert beat["lesson_progress"]["watch_time_seconds"] == 7
    assert commit_modes == ["on"]
