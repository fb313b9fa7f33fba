"""The progress heartbeat's single statement (services/enrollment_service._heartbeat): on
PostgreSQL one WITH that checks the enrollment and the lesson, writes the progress row and the
enrollment's times, and commits on its own. What it must still refuse, what it leaves to the
statements of the full path (a stored percentage its snapshot cannot trust, a course whose
lessons are all done), and the values it keeps. Every test runs on both databases: SQLite
takes the full path, and the answers and rows must be the same."""
from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from sqlalchemy import select, text, update

from models import Certificate, Enrollment, LessonProgress, db
from services import enrollment_service
from tests.support.assertions import count, error, ok
from tests.support.queries import recorded_statements
from tests.support.learning import (  # noqa: F401 (actor, instructor, student: fixtures)
    API,
    actor,
    add_lesson,
    build_course,
    complete,
    enroll,
    instructor,
    student,
)
from utils.validators import INT_MAX

LONGEST = 10 * 24 * 3600  # the most watch time a write may carry (routes/enrollments_routes.py)


def _beat(client, who, enrollment_id, lesson_id, body=None, status=200):
    return complete(client, who, enrollment_id, lesson_id,
                    json=body if body is not None else {"watch_time_seconds": 30},
                    status=status)


def _times(app, enrollment_id):
    with app.app_context():
        row = db.session.get(Enrollment, enrollment_id)
        return row.started_at, row.last_accessed_at, row.updated_at, row.progress_percent


def _progress_rows(app, enrollment_id):
    with app.app_context():
        return [(r.lesson_id, r.completed, r.watch_time_seconds) for r in db.session.scalars(
            select(LessonProgress).where(LessonProgress.enrollment_id == enrollment_id)
            .order_by(LessonProgress.lesson_id))]


def _postgres(app) -> bool:
    return app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql")


@pytest.fixture
def begun(client, instructor, student):  # noqa: F811
    """A student 1 of 2 lessons in (the first completed, the second watched for 10 s)."""
    built = build_course(client, instructor, "Beats", modules=(("B1", "B2"),))
    eid = enroll(client, student, built.id)["id"]
    complete(client, student, eid, built.lesson_ids[0])
    _beat(client, student, eid, built.lesson_ids[1], {"watch_time_seconds": 10})
    return built, eid


def test_a_heartbeat_refused_writes_nothing(app, client, actor, instructor, student,  # noqa: F811
                                            begun):
    built, eid = begun
    other = build_course(client, instructor, "Elsewhere", modules=(("E1",),))
    before_rows, before_times = _progress_rows(app, eid), _times(app, eid)

    # Another student's enrollment, a lesson of another course, a lesson id past any row.
    stranger = actor()
    assert _beat(client, stranger, eid, built.lesson_ids[1], status=404)["error"] == \
        "Enrollment not found"
    assert _beat(client, student, eid, other.lesson_ids[0], status=404)["error"] == \
        "This lesson is not part of the course"
    assert _beat(client, student, eid, INT_MAX, status=404)["error"] == \
        "This lesson is not part of the course"
    # The same by course: a course the caller is not enrolled in.
    error(client.post(f"{API}/enrollments/get-enrollments/{other.id}/lessons/"
                      f"{other.lesson_ids[0]}/progress", json={"watch_time_seconds": 5},
                      headers=student.headers), 404)
    # A closed enrollment: 403, and its watch time stays where it was.
    ok(client.delete(f"{API}/enrollments/{eid}", headers=student.headers))
    closed_times = _times(app, eid)
    error(client.post(f"{API}/enrollments/{eid}/lessons/{built.lesson_ids[1]}/complete",
                      json={"watch_time_seconds": 99}, headers=student.headers),
          403, "enrollment_inactive")

    assert _progress_rows(app, eid) == before_rows
    assert before_times[:2] == closed_times[:2]
    assert _times(app, eid) == closed_times
    assert count(app, LessonProgress, LessonProgress.enrollment_id.in_(
        select(Enrollment.id).where(Enrollment.course_id == other.id))) == 0


def test_the_furthest_point_and_the_first_times_are_kept(app, client, student, begun):  # noqa: F811
    built, eid = begun
    second = built.lesson_ids[1]
    first_answer = _beat(client, student, eid, second, {"watch_time_seconds": 10})
    started = first_answer["lesson_progress"]["started_at"]

    assert _beat(client, student, eid, second, {"watch_time_seconds": 4})[
        "lesson_progress"]["watch_time_seconds"] == 10
    error(client.post(f"{API}/enrollments/{eid}/lessons/{second}/complete",
                      json={"watch_time_seconds": LONGEST + 1}, headers=student.headers), 422)
    top = _beat(client, student, eid, second, {"watch_time_seconds": LONGEST})
    assert top["lesson_progress"]["watch_time_seconds"] == LONGEST
    assert top["lesson_progress"]["started_at"] == started
    # By course, with an empty body: a visit, no watch time; nothing goes back.
    visit = ok(client.post(f"{API}/enrollments/get-enrollments/{built.id}/lessons/{second}"
                           "/progress", json={}, headers=student.headers))
    assert visit["lesson_progress"]["watch_time_seconds"] == LONGEST
    assert visit["lesson_progress"]["completed"] is False
    assert visit["lesson_progress"]["last_accessed_at"] >= top["lesson_progress"][
        "last_accessed_at"]
    # A completed lesson's heartbeat leaves the completion and its time.
    done = _beat(client, student, eid, built.lesson_ids[0], {"watch_time_seconds": 7})
    assert done["lesson_progress"]["completed"] is True
    assert done["lesson_progress"]["completed_at"] is not None
    assert done["enrollment"]["progress_percent"] == 50.0
    assert _progress_rows(app, eid) == [(built.lesson_ids[0], True, 7),
                                        (second, False, LONGEST)]


def test_a_lesson_s_first_heartbeat_creates_its_row_by_course(app, client, instructor,  # noqa: F811
                                                              student):
    built = build_course(client, instructor, "First beat", modules=(("F1", "F2"),))
    eid = enroll(client, student, built.id)["id"]
    assert _times(app, eid)[0] is None  # not started
    path = f"{API}/enrollments/get-enrollments/{built.id}/lessons/{built.lesson_ids[1]}/progress"

    body = ok(client.post(path, json={"watch_time_seconds": 3}, headers=student.headers))

    assert body["lesson_progress"]["watch_time_seconds"] == 3
    assert body["lesson_progress"]["completed"] is False
    assert body["lesson_progress"]["started_at"] is not None
    assert body["enrollment"]["id"] == eid
    assert (body["enrollment"]["completed_lessons"], body["enrollment"]["total_lessons"]) == \
        (0, 2)
    assert body["enrollment"]["started_at"] is not None
    assert _progress_rows(app, eid) == [(built.lesson_ids[1], False, 3)]
    started = _times(app, eid)[0]
    assert started is not None
    ok(client.post(path, json={"watch_time_seconds": 1}, headers=student.headers))
    assert _times(app, eid)[0] == started  # the enrollment's start stays its first
    assert _progress_rows(app, eid) == [(built.lesson_ids[1], False, 3)]


def test_a_stale_percentage_is_stored_by_the_full_path(app, client, instructor, student,  # noqa: F811
                                                       begun, monkeypatch):
    """Lessons added after a completion: the heartbeat's counts differ from the stored
    percentage, so the full path's statements store it (after the one statement, on
    PostgreSQL). Flask's path alone here: the signed-in fast path would send the statement
    once more before handing the write to Flask (tests/test_signed_in_fast_path.py)."""
    monkeypatch.setitem(app.config, "SIGNED_IN_FAST_PATH", False)
    built, eid = begun
    add_lesson(client, instructor, built.module_ids[0], "B3")
    assert _times(app, eid)[3] == Decimal("50.00")

    with recorded_statements(app) as statements:
        body = _beat(client, student, eid, built.lesson_ids[1], {"watch_time_seconds": 20})

    assert body["enrollment"]["progress_percent"] == 33.33
    assert (body["enrollment"]["completed_lessons"], body["enrollment"]["total_lessons"]) == \
        (1, 3)
    assert _times(app, eid)[3] == Decimal("33.33")
    if _postgres(app):  # the statement, then the enrollment, the row, the counts, the store
        assert len(statements) == 5, "\n".join(statements)
        assert statements[0].lstrip().startswith("WITH target AS")
    else:
        assert len(statements) == 4, "\n".join(statements)
    # Stored: the next heartbeat is one statement again.
    with recorded_statements(app) as statements:
        _beat(client, student, eid, built.lesson_ids[1], {"watch_time_seconds": 25})
    assert len(statements) == (1 if _postgres(app) else 3), "\n".join(statements)


def test_a_heartbeat_completes_a_course_whose_other_lessons_went(app, client, instructor,  # noqa: F811
                                                                 student, begun):
    """The unfinished lesson deleted: every lesson left is done, and the next heartbeat
    completes the course once, with its certificate, through the full path."""
    built, eid = begun
    ok(client.delete(f"{API}/lessons/delete-lessons/{built.lesson_ids[1]}",
                     headers=instructor.headers))
    body = _beat(client, student, eid, built.lesson_ids[0], {"watch_time_seconds": 40})
    assert body["course_completed"] is True
    assert body["certificate"]["course_id"] == built.id
    assert body["enrollment"]["status"] == "completed"
    again = _beat(client, student, eid, built.lesson_ids[0], {"watch_time_seconds": 41})
    assert again["course_completed"] is False
    assert again["certificate"]["certificate_number"] == \
        body["certificate"]["certificate_number"]
    assert count(app, Certificate, Certificate.user_id == student.id) == 1
    with app.app_context():
        row = db.session.get(Enrollment, eid)
        assert row.status == "completed" and row.progress_percent == Decimal("100.00")


def test_inside_a_transaction_that_wrote_the_enrollment_the_full_path_writes(app, client,  # noqa: F811
                                                                          student, begun):
    """The one statement runs on a connection of its own: inside a transaction that holds the
    enrollment's row lock it would wait for its own caller. `record_progress` then takes the
    full path, in that transaction. (Run in a thread: should it wait, the test cancels the
    waiting statement and fails instead of hanging.)"""
    if not _postgres(app):
        pytest.skip("the one statement is PostgreSQL's")
    built, eid = begun
    outcome = {}

    def write():
        with app.app_context():
            db.session.execute(update(Enrollment).where(Enrollment.id == eid)
                               .values(last_accessed_at=Enrollment.last_accessed_at))
            with recorded_statements(app) as statements:
                try:
                    outcome["answer"] = enrollment_service.record_progress(
                        student.id, built.lesson_ids[1], completed=None, watch_time_seconds=77,
                        enrollment_id=eid)
                    db.session.commit()
                except Exception as exc:
                    outcome["error"] = exc
                    db.session.rollback()
            outcome["statements"] = statements
            db.session.remove()

    writer = threading.Thread(target=write)
    writer.start()
    writer.join(15)
    if writer.is_alive():
        with app.app_context():
            db.session.execute(text(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"))
            db.session.commit()
        writer.join(15)
        pytest.fail("the heartbeat waited for its own transaction's lock")
    assert "error" not in outcome, outcome.get("error")
    assert outcome["answer"]["lesson_progress"]["watch_time_seconds"] == 77
    assert not any("WITH target" in s for s in outcome["statements"]), outcome["statements"]
    assert _progress_rows(app, eid)[1] == (built.lesson_ids[1], False, 77)
