"""A watch-time heartbeat commits without waiting for PostgreSQL's WAL flush; a completion, and
every write once HEARTBEAT_ASYNC_COMMIT is off, waits (services/enrollment_service.py). Read
from the transaction itself, just before it commits: `SHOW synchronous_commit`."""
from __future__ import annotations

import pytest
from sqlalchemy import event, select

from models import LessonProgress, db
from tests.test_enrollments import actor, build_course, complete, enroll  # noqa: F401 (actor)


@pytest.fixture
def commit_modes(app):
    """synchronous_commit as each committing transaction had it, in order."""
    seen: list[str] = []

    def before_commit(session):
        if session.in_transaction() and session.get_bind().dialect.name == "postgresql":
            seen.append(session.connection().exec_driver_sql(
                "SHOW synchronous_commit").scalar())

    event.listen(db.session, "before_commit", before_commit)
    yield seen
    event.remove(db.session, "before_commit", before_commit)


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
    watch time is 404, writes nothing and commits nothing."""
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        pytest.skip("the heartbeat's statement is PostgreSQL's")
    _, enrollment_id, (first, _) = course
    stranger = actor()
    del commit_modes[:]
    body = complete(client, stranger, enrollment_id, first, json={"watch_time_seconds": 99},
                    status=404)
    assert body["error"] == "Enrollment not found"
    assert commit_modes == []
    with app.app_context():
        assert db.session.scalar(select(LessonProgress.id).where(
            LessonProgress.enrollment_id == enrollment_id)) is None


def test_turned_off_every_write_waits(app, client, course, commit_modes, monkeypatch):
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        pytest.skip("synchronous_commit is PostgreSQL's")
    monkeypatch.setitem(app.config, "HEARTBEAT_ASYNC_COMMIT", False)
    student, enrollment_id, (first, _) = course
    del commit_modes[:]
    beat = complete(client, student, enrollment_id, first, json={"watch_time_seconds": 7})
    assert beat["lesson_progress"]["watch_time_seconds"] == 7
    assert commit_modes == ["on"]
