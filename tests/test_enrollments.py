"""Enrollment, lesson progress and the student's dashboard through the HTTP API: free and paid
enrollment, prerequisites, draft and archived courses, idempotency and the race on PostgreSQL,
re-enrollment, progress arithmetic with lessons added later, completion happening exactly once,
who may read or change whose progress, and the /users lists with a constant query count.

Every test checks the status code, the body and what the database holds afterwards. Courses are
built through the API by their instructor; only payments and certificates (whose issues have not
landed) are inserted through the ORM.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from models import (
    Certificate,
    Enrollment,
    LessonProgress,
    Notification,
    Payment,
    db,
)
from tests.support.assertions import count, error, fetch, ok
from tests.support.concurrency import all_at_once, fire_together
from tests.support.learning import (  # noqa: F401 (actor, course, instructor, student: fixtures)
    API,
    Actor,
    Built,
    actor,
    actor_in,
    add_certificate,
    add_lesson,
    add_payment,
    build_course,
    complete,
    completion_notifications,
    course,
    enroll,
    instructor,
    set_status,
    student,
)
from tests.support.queries import recorded_statements
from utils.helpers import iso

# --- 1. enrolling -----------------------------------------------------------------------------

def test_enroll_in_free_course_is_idempotent(app, client, student, course):
    first = enroll(client, student, course.id)
    assert first["status"] == "active"
    assert first["user_id"] == student.id and first["course_id"] == course.id
    assert first["course"]["id"] == course.id
    assert first["payment_id"] is None
    assert first["progress_percent"] == 0.0
    assert (first["completed_lessons"], first["total_lessons"]) == (0, 3)
    assert first["started_at"] is None and first["completed_at"] is None
    assert first["enrolled_at"].endswith("+00:00")
    row = fetch(app, Enrollment, Enrollment.user_id == student.id)
    assert (row.id, row.status, row.course_id) == (first["id"], "active", course.id)

    again = enroll(client, student, course.id, status=200)
    assert again["id"] == first["id"] and again["status"] == "active"
    assert count(app, Enrollment, Enrollment.user_id == student.id) == 1


def test_enroll_alias_with_course_in_path(app, client, student, course):
    body = ok(client.post(f"{API}/enrollments/create-enrollments/{course.id}",
                          headers=student.headers), 201)
    assert body["message"] == "Enrolled"
    assert body["enrollment"]["course_id"] == course.id
    again = ok(client.post(f"{API}/enrollments/create-enrollments/{course.id}",
                           headers=student.headers), 200)
    assert again["message"] == "Already enrolled"
    assert again["enrollment"]["id"] == body["enrollment"]["id"]
    # The canonical path sees the same row.
    assert enroll(client, student, course.id, status=200)["id"] == body["enrollment"]["id"]
    assert count(app, Enrollment, Enrollment.user_id == student.id) == 1


def test_paid_course_needs_a_completed_payment(app, client, instructor, student):
    paid = build_course(client, instructor, "Paid Course", price=10)
    body = error(client.post(f"{API}/enrollments", json={"course_id": paid.id},
                             headers=student.headers), 402, "payment_required")
    details = body["details"]
    assert details["course_id"] == paid.id
    assert details["price"] == 10.0 and details["currency"] == "USD"
    assert details["pay_with"] == {"razorpay": "/api/v1/payments/razorpay/create-order",
                                   "stripe": "/api/v1/payments/stripe/create-checkout"}
    assert count(app, Enrollment) == 0

    # A payment that is not completed does not count; neither does another user's.
    add_payment(app, student.id, paid.id, status="pending")
    error(client.post(f"{API}/enrollments/create-enrollments/{paid.id}",
                      headers=student.headers), 402, "payment_required")
    assert count(app, Enrollment) == 0

    payment_id = add_payment(app, student.id, paid.id)
    enrollment = enroll(client, student, paid.id)
    assert enrollment["payment_id"] == payment_id and enrollment["status"] == "active"
    row = fetch(app, Enrollment, Enrollment.user_id == student.id)
    assert row.payment_id == payment_id


def test_someone_elses_payment_does_not_enroll(app, client, instructor, actor):
    paid = build_course(client, instructor, "Paid Course", price=10)
    payer, freeloader = actor(), actor()
    add_payment(app, payer.id, paid.id)
    error(client.post(f"{API}/enrollments", json={"course_id": paid.id},
                      headers=freeloader.headers), 402, "payment_required")
    assert count(app, Enrollment) == 0


def test_draft_archived_and_unknown_courses_cannot_be_enrolled_in(app, client, instructor,
                                                                 student):
    draft = build_course(client, instructor, "Draft Course", publish=False)
    body = error(client.post(f"{API}/enrollments", json={"course_id": draft.id},
                             headers=student.headers), 404, "not_found")
    assert "Draft Course" not in body["error"]
    error(client.post(f"{API}/enrollments/create-enrollments/{draft.id}",
                      headers=student.headers), 404, "not_found")

    archived = build_course(client, instructor, "Archived Course")
    set_status(client, instructor, archived.id, "archived")
    error(client.post(f"{API}/enrollments", json={"course_id": archived.id},
                      headers=student.headers), 404, "not_found")

    # The owner sees the draft, but it is still not open for enrollment.
    error(client.post(f"{API}/enrollments", json={"course_id": draft.id},
                      headers=instructor.headers), 409, "course_not_open")

    error(client.post(f"{API}/enrollments", json={"course_id": 999_999},
                      headers=student.headers), 404, "not_found")
    error(client.post(f"{API}/enrollments/create-enrollments/999999",
                      headers=student.headers), 404, "not_found")
    assert count(app, Enrollment) == 0


def test_enroll_validation_and_authentication(app, client, student, course):
    body = error(client.post(f"{API}/enrollments", json={}, headers=student.headers), 422)
    assert "course_id" in body["details"]
    error(client.post(f"{API}/enrollments", json={"course_id": "abc"},
                      headers=student.headers), 422)
    error(client.post(f"{API}/enrollments", json={"course_id": 0},
                      headers=student.headers), 422)
    error(client.post(f"{API}/enrollments", json={"course_id": course.id}), 401)
    error(client.post(f"{API}/enrollments/create-enrollments/{course.id}"), 401)
    error(client.post(f"{API}/enrollments", json={"course_id": course.id},
                      headers={"Authorization": "Bearer not-a-token"}), 401)
    assert count(app, Enrollment) == 0


# --- 2. prerequisites -------------------------------------------------------------------------

def test_prerequisites_must_be_completed_first(app, client, instructor, student):
    basics = build_course(client, instructor, "Basics", modules=(("B1", "B2"),))
    advanced = build_course(client, instructor, "Advanced", modules=(("A1",),))
    ok(client.post(f"{API}/courses/{advanced.id}/prerequisites",
                   json={"prerequisite_course_ids": [basics.id]}, headers=instructor.headers), 201)

    body = error(client.post(f"{API}/enrollments", json={"course_id": advanced.id},
                             headers=student.headers), 403, "prerequisites_missing")
    missing = body["details"]["missing_prerequisites"]
    assert [m["id"] for m in missing] == [basics.id]
    assert missing[0]["title"] == "Basics" and missing[0]["slug"]
    assert count(app, Enrollment, Enrollment.course_id == advanced.id) == 0

    # Being enrolled, or halfway through, is not enough.
    enrollment = enroll(client, student, basics.id)
    complete(client, student, enrollment["id"], basics.lesson_ids[0])
    error(client.post(f"{API}/enrollments/create-enrollments/{advanced.id}",
                      headers=student.headers), 403, "prerequisites_missing")

    done = complete(client, student, enrollment["id"], basics.lesson_ids[1])
    assert done["course_completed"] is True
    enrolled = enroll(client, student, advanced.id)
    assert enrolled["status"] == "active"
    assert count(app, Enrollment, Enrollment.user_id == student.id) == 2


def test_an_unpublished_prerequisite_is_neither_required_nor_named(app, client, instructor,
                                                                    student):
    """A prerequisite that is not published cannot be taken, so it is not required, and a
    student's 403 never names it (its title would leak a draft)."""
    basics = build_course(client, instructor, "Basics", modules=(("B1",),))
    advanced = build_course(client, instructor, "Advanced", modules=(("A1",),))
    plans = ok(client.post(f"{API}/courses", json={"title": "Unannounced plans"},
                           headers=instructor.headers), 201)["course"]
    ok(client.post(f"{API}/courses/{advanced.id}/prerequisites", headers=instructor.headers,
                   json={"prerequisite_course_ids": [basics.id, plans["id"]]}), 201)

    body = error(client.post(f"{API}/enrollments", json={"course_id": advanced.id},
                             headers=student.headers), 403, "prerequisites_missing")
    assert [m["id"] for m in body["details"]["missing_prerequisites"]] == [basics.id]
    assert "Unannounced" not in str(body)

    complete(client, student, enroll(client, student, basics.id)["id"], basics.lesson_ids[0])
    assert enroll(client, student, advanced.id)["status"] == "active"
    assert count(app, Enrollment, Enrollment.course_id == advanced.id) == 1


# --- 3. re-enrollment -------------------------------------------------------------------------

def test_cancel_and_reenroll_reactivates_the_same_row(app, client, student, course):
    enrollment = enroll(client, student, course.id)
    complete(client, student, enrollment["id"], course.lesson_ids[0])

    body = ok(client.delete(f"{API}/enrollments/{enrollment['id']}", headers=student.headers))
    assert body["enrollment"]["status"] == "cancelled"
    assert body["enrollment"]["cancelled_at"] is not None
    row = fetch(app, Enrollment, Enrollment.id == enrollment["id"])
    assert row.status == "cancelled" and row.cancelled_at is not None
    assert count(app, LessonProgress, LessonProgress.enrollment_id == enrollment["id"]) == 1

    # While cancelled: no progress can be recorded, and the lists leave it out.
    error(client.post(f"{API}/enrollments/{enrollment['id']}/lessons/{course.lesson_ids[1]}"
                      "/complete", headers=student.headers), 403, "enrollment_inactive")
    assert ok(client.get(f"{API}/users/enrolled-courses",
                         headers=student.headers))["enrollments"] == []

    again = enroll(client, student, course.id)  # 201: re-activated
    assert again["id"] == enrollment["id"]
    assert again["status"] == "active" and again["cancelled_at"] is None
    assert (again["completed_lessons"], again["total_lessons"]) == (1, 3)
    assert again["progress_percent"] == 33.33
    row = fetch(app, Enrollment, Enrollment.user_id == student.id)
    assert (row.id, row.status, row.cancelled_at) == (enrollment["id"], "active", None)
    assert count(app, Enrollment, Enrollment.user_id == student.id) == 1
    assert count(app, LessonProgress, LessonProgress.enrollment_id == enrollment["id"]) == 1


def test_paid_enrollment_is_not_cancelled_here_but_reactivated_after_refund(
        app, client, instructor, student):
    paid = build_course(client, instructor, "Paid Course", price=10)
    first_payment = add_payment(app, student.id, paid.id)
    enrollment = enroll(client, student, paid.id)
    error(client.delete(f"{API}/enrollments/{enrollment['id']}", headers=student.headers),
          409, "use_refund_request")
    assert fetch(app, Enrollment, Enrollment.id == enrollment["id"]).status == "active"

    complete(client, student, enrollment["id"], paid.lesson_ids[0])
    # A refund (the payments issue's job) revokes the enrollment and the payment.
    with app.app_context():
        db.session.get(Payment, first_payment).status = "refunded"
        row = db.session.get(Enrollment, enrollment["id"])
        row.status, row.cancelled_at = "refunded", datetime.now(timezone.utc)
        db.session.commit()

    error(client.post(f"{API}/enrollments", json={"course_id": paid.id},
                      headers=student.headers), 402, "payment_required")
    second_payment = add_payment(app, student.id, paid.id)
    again = enroll(client, student, paid.id)
    assert again["id"] == enrollment["id"]
    assert again["status"] == "active" and again["payment_id"] == second_payment
    assert again["completed_lessons"] == 1
    assert count(app, Enrollment) == 1


def test_reenrolling_a_completed_course_keeps_the_completion(app, client, instructor, student):
    """Leaving a completed course and coming back does not undo the completion: the row is
    'completed' again, listed as such, and still satisfies prerequisites."""
    finished = build_course(client, instructor, "Finished", modules=(("F1",),))
    follow_up = build_course(client, instructor, "Follow-up", modules=(("U1",),))
    ok(client.post(f"{API}/courses/{follow_up.id}/prerequisites",
                   json={"prerequisite_course_ids": [finished.id]},
                   headers=instructor.headers), 201)
    enrollment = enroll(client, student, finished.id)
    assert complete(client, student, enrollment["id"], finished.lesson_ids[0])[
        "course_completed"] is True
    ok(client.delete(f"{API}/enrollments/{enrollment['id']}", headers=student.headers))

    again = enroll(client, student, finished.id)
    assert again["id"] == enrollment["id"]
    assert again["completed_at"] is not None and again["progress_percent"] == 100.0
    assert again["status"] == "completed"
    assert completion_notifications(app, student.id) == 1
    assert fetch(app, Enrollment, Enrollment.id == enrollment["id"]).status == "completed"
    completed = ok(client.get(f"{API}/users/completed-courses", headers=student.headers))
    assert [e["id"] for e in completed["enrollments"]] == [enrollment["id"]]
    enroll(client, student, follow_up.id)


# --- 4. the race (PostgreSQL) -----------------------------------------------------------------

@pytest.fixture
def race_app(postgres_app):
    return postgres_app


RACERS = 8


def test_simultaneous_enrollments_make_one_row(race_app):
    client = race_app.test_client()
    owner = actor_in(race_app, "instructor", 1)
    for round_no in range(5):
        built = build_course(client, owner, f"Race course {round_no}", modules=(("R1",),))
        racer = actor_in(race_app, "student", 10 + round_no)
        results = fire_together(race_app, RACERS, "POST", f"{API}/enrollments", racer.headers,
                                json={"course_id": built.id})
        statuses = sorted(status for status, _ in results)
        assert set(statuses) <= {200, 201}, results
        assert statuses.count(201) == 1, statuses
        ids = {body["enrollment"]["id"] for _, body in results}
        assert len(ids) == 1
        assert all(body["enrollment"]["status"] == "active" for _, body in results)
        with race_app.app_context():
            rows = db.session.scalars(select(Enrollment).where(
                Enrollment.user_id == racer.id, Enrollment.course_id == built.id)).all()
            assert [r.id for r in rows] == list(ids)


def test_simultaneous_completion_of_the_last_lesson_completes_once(race_app):
    client = race_app.test_client()
    owner = actor_in(race_app, "instructor", 1)
    built = build_course(client, owner, "Race to finish", modules=(("R1", "R2", "R3"),))
    last = built.lesson_ids[-1]
    for n, last_lesson_seen_before in ((1, False), (2, True)):
        racer = actor_in(race_app, "student", 100 + n)
        enrollment = enroll(client, racer, built.id)
        for lesson_id in built.lesson_ids[:-1]:
            complete(client, racer, enrollment["id"], lesson_id)
        if last_lesson_seen_before:  # the race is then on an existing progress row
            ok(client.put(f"{API}/enrollments/get-enrollments/{built.id}/lessons/{last}/progress",
                          json={"watch_time_seconds": 5}, headers=racer.headers))

        results = fire_together(
            race_app, RACERS, "POST",
            f"{API}/enrollments/{enrollment['id']}/lessons/{last}/complete", racer.headers)
        assert [status for status, _ in results] == [200] * RACERS, results
        assert [body["course_completed"] for _, body in results].count(True) == 1
        completed_at = {body["enrollment"]["completed_at"] for _, body in results}
        assert len(completed_at) == 1 and None not in completed_at
        assert all(body["enrollment"]["status"] == "completed" for _, body in results)
        assert completion_notifications(race_app, racer.id) == 1
        assert count(race_app, Certificate, Certificate.user_id == racer.id) == 1
        with race_app.app_context():
            row = db.session.get(Enrollment, enrollment["id"])
            assert row.status == "completed" and row.progress_percent == Decimal("100.00")
            assert iso(row.completed_at) == completed_at.pop()
            assert db.session.scalar(select(func.count()).select_from(LessonProgress).where(
                LessonProgress.enrollment_id == enrollment["id"],
                LessonProgress.lesson_id == last)) == 1


def test_simultaneous_heartbeats_keep_the_furthest_point_and_never_undo_a_completion(race_app):
    """Watch-time heartbeats commit without waiting for the WAL flush (HEARTBEAT_ASYNC_COMMIT,
    on here): sent at once with a completion of the same lesson, on a new row and on a begun
    one, they leave one row, the furthest point reached and the completion; then, raced with
    the completion of the last lesson, the course completes once, with one certificate."""
    assert race_app.config["HEARTBEAT_ASYNC_COMMIT"]
    client = race_app.test_client()
    owner = actor_in(race_app, "instructor", 1)
    built = build_course(client, owner, "Race to watch", modules=(("W1", "W2"),))
    first, last = built.lesson_ids
    watched = [70, 10, 80, 30, 60, 20, 50, 40]

    def post(racer, enrollment_id, lesson_id, body):
        def send():
            response = race_app.test_client().post(
                f"{API}/enrollments/{enrollment_id}/lessons/{lesson_id}/complete",
                json=body, headers=racer.headers)
            return response.status_code, response.get_json()
        return send

    for n, begun in ((1, False), (2, True)):
        racer = actor_in(race_app, "student", 300 + n)
        enrollment = enroll(client, racer, built.id)["id"]
        if begun:
            complete(client, racer, enrollment, first, json={"watch_time_seconds": 5})
        results = all_at_once(
            [post(racer, enrollment, first, {"watch_time_seconds": w}) for w in watched]
            + [post(racer, enrollment, first, {"completed": True})])
        assert [status for status, _ in results] == [200] * 9, results
        for sent, (_, body) in zip(watched, results):
            assert body["lesson_progress"]["watch_time_seconds"] >= sent
            assert body["course_completed"] is False and body["certificate"] is None
        with race_app.app_context():
            rows = db.session.scalars(select(LessonProgress).where(
                LessonProgress.enrollment_id == enrollment)).all()
            assert [(r.lesson_id, r.completed, r.watch_time_seconds) for r in rows] == [
                (first, True, max(watched))]
            assert rows[0].completed_at is not None
            assert db.session.get(Enrollment, enrollment).progress_percent == Decimal("50.00")

        results = all_at_once(
            [post(racer, enrollment, last, {"watch_time_seconds": w}) for w in watched[:5]]
            + [post(racer, enrollment, last, {"completed": True}) for _ in range(3)])
        assert [status for status, _ in results] == [200] * 8, results
        assert [body["course_completed"] for _, body in results].count(True) == 1
        assert count(race_app, Certificate, Certificate.user_id == racer.id) == 1
        assert completion_notifications(race_app, racer.id) == 1
        with race_app.app_context():
            row = db.session.get(Enrollment, enrollment)
            assert row.status == "completed" and row.progress_percent == Decimal("100.00")
            assert db.session.scalar(select(LessonProgress.watch_time_seconds).where(
                LessonProgress.enrollment_id == enrollment,
                LessonProgress.lesson_id == last)) == max(watched[:5])


# --- 5. progress arithmetic -------------------------------------------------------------------

def test_progress_arithmetic_and_completion_once(app, client, instructor, student, actor):
    built = build_course(client, instructor, "Three lessons")
    l1, l2, l3 = built.lesson_ids
    enrollment = enroll(client, student, built.id)
    eid = enrollment["id"]

    body = complete(client, student, eid, l1)
    assert body["course_completed"] is False
    assert body["lesson_progress"]["lesson_id"] == l1
    assert body["lesson_progress"]["completed"] is True
    first_completed_at = body["lesson_progress"]["completed_at"]
    assert first_completed_at is not None
    e = body["enrollment"]
    assert e["progress_percent"] == 33.33
    assert (e["completed_lessons"], e["total_lessons"]) == (1, 3)
    assert e["started_at"] is not None and e["last_accessed_at"] is not None
    assert e["status"] == "active" and e["completed_at"] is None
    row = fetch(app, Enrollment, Enrollment.id == eid)
    assert row.progress_percent == Decimal("33.33") and row.started_at is not None

    # Idempotent: the same lesson again changes nothing.
    again = complete(client, student, eid, l1)
    assert again["enrollment"]["progress_percent"] == 33.33
    assert again["lesson_progress"]["completed_at"] == first_completed_at
    assert again["enrollment"]["started_at"] == e["started_at"]
    assert count(app, LessonProgress, LessonProgress.enrollment_id == eid) == 1

    # Watch time keeps the furthest point reached (the alias does not complete by default).
    alias = f"{API}/enrollments/get-enrollments/{built.id}/lessons/{l2}/progress"
    watched = ok(client.put(alias, json={"watch_time_seconds": 120}, headers=student.headers))
    assert watched["lesson_progress"]["watch_time_seconds"] == 120
    assert watched["lesson_progress"]["completed"] is False
    watched = ok(client.post(alias, json={"watch_time_seconds": 60}, headers=student.headers))
    assert watched["lesson_progress"]["watch_time_seconds"] == 120
    assert watched["enrollment"]["completed_lessons"] == 1
    assert fetch(app, LessonProgress, LessonProgress.enrollment_id == eid,
                 LessonProgress.lesson_id == l2).watch_time_seconds == 120
    error(client.put(alias, json={"watch_time_seconds": -1}, headers=student.headers), 422)
    error(client.put(alias, json={"completed": "maybe"}, headers=student.headers), 422)

    # {"completed": false} un-completes.
    undone = complete(client, student, eid, l1, json={"completed": False})
    assert undone["lesson_progress"]["completed"] is False
    assert undone["lesson_progress"]["completed_at"] is None
    assert undone["enrollment"]["progress_percent"] == 0.0
    assert undone["enrollment"]["completed_lessons"] == 0
    assert fetch(app, LessonProgress, LessonProgress.enrollment_id == eid,
                 LessonProgress.lesson_id == l1).completed is False
    assert fetch(app, Enrollment, Enrollment.id == eid).progress_percent == Decimal("0.00")

    # A second student gets to 2 of 3.
    other = actor()
    other_eid = enroll(client, other, built.id)["id"]
    complete(client, other, other_eid, l1)
    assert complete(client, other, other_eid, l2)["enrollment"]["progress_percent"] == 66.67

    # Completing all lessons completes the course, once.
    complete(client, student, eid, l1)
    assert ok(client.put(alias, json={"completed": True}, headers=student.headers))[
        "enrollment"]["progress_percent"] == 66.67
    assert completion_notifications(app, student.id) == 0
    finished = complete(client, student, eid, l3)
    assert finished["course_completed"] is True
    e = finished["enrollment"]
    assert e["status"] == "completed" and e["completed_at"] is not None
    assert e["progress_percent"] == 100.0
    assert (e["completed_lessons"], e["total_lessons"]) == (3, 3)
    row = fetch(app, Enrollment, Enrollment.id == eid)
    assert row.status == "completed" and row.completed_at is not None
    assert row.progress_percent == Decimal("100.00")
    completed_at = e["completed_at"]
    note = fetch(app, Notification, Notification.user_id == student.id)
    assert (note.kind, note.title) == ("course_update", "Course completed")
    assert "Three lessons" in note.message
    assert note.data == {"course_id": built.id, "enrollment_id": eid}

    # Completing the last lesson again, or un-completing and re-completing it: still once.
    assert complete(client, student, eid, l3)["course_completed"] is False
    undone = complete(client, student, eid, l3, json={"completed": False})
    assert undone["enrollment"]["status"] == "completed"
    assert undone["enrollment"]["progress_percent"] == 100.0
    assert undone["enrollment"]["completed_lessons"] == 2
    redone = complete(client, student, eid, l3)
    assert redone["course_completed"] is False
    assert redone["enrollment"]["completed_at"] == completed_at
    assert completion_notifications(app, student.id) == 1
    assert completion_notifications(app, other.id) == 0
    assert count(app, Notification) == 1
    assert count(app, Certificate) == 1
    assert fetch(app, Certificate, Certificate.user_id == student.id).enrollment_id == eid

    # The instructor adds a lesson: the earned completion stands, the others' percentage drops.
    l4 = add_lesson(client, instructor, built.module_ids[0], "L4")
    mine = ok(client.get(f"{API}/enrollments/{eid}", headers=student.headers))["enrollment"]
    assert mine["status"] == "completed" and mine["progress_percent"] == 100.0
    assert (mine["completed_lessons"], mine["total_lessons"]) == (3, 4)
    assert mine["completed_at"] == completed_at
    theirs = ok(client.get(f"{API}/enrollments/{other_eid}", headers=other.headers))["enrollment"]
    assert theirs["status"] == "active" and theirs["progress_percent"] == 50.0
    assert (theirs["completed_lessons"], theirs["total_lessons"]) == (2, 4)
    detailed = ok(client.get(f"{API}/enrollments/{other_eid}/progress", headers=other.headers))
    assert detailed["enrollment"]["progress_percent"] == 50.0
    listed = ok(client.get(f"{API}/users/my-courses", headers=other.headers))["enrollments"]
    assert [(x["id"], x["progress_percent"]) for x in listed] == [(other_eid, 50.0)]

    # The new lesson counts toward the others' completion.
    complete(client, other, other_eid, l3)
    assert complete(client, other, other_eid, l4)["course_completed"] is True
    assert completion_notifications(app, other.id) == 1
    assert completion_notifications(app, student.id) == 1


def test_lesson_of_another_course_is_404_on_every_path(app, client, instructor, student):
    mine = build_course(client, instructor, "Mine")
    elsewhere = build_course(client, instructor, "Elsewhere", modules=(("X1",),))
    eid = enroll(client, student, mine.id)["id"]
    foreign = elsewhere.lesson_ids[0]

    error(client.post(f"{API}/enrollments/{eid}/lessons/{foreign}/complete",
                      headers=student.headers), 404, "not_found")
    error(client.post(f"{API}/enrollments/{eid}/lessons/999999/complete",
                      headers=student.headers), 404, "not_found")
    alias = f"{API}/enrollments/get-enrollments/{mine.id}/lessons/{foreign}/progress"
    error(client.get(alias, headers=student.headers), 404, "not_found")
    error(client.post(alias, json={"completed": True}, headers=student.headers), 404, "not_found")
    error(client.put(alias, json={"completed": True}, headers=student.headers), 404, "not_found")
    # Not enrolled in the other course: its own paths are 404 too.
    error(client.put(f"{API}/enrollments/get-enrollments/{elsewhere.id}/lessons/{foreign}"
                     "/progress", json={"completed": True}, headers=student.headers), 404)
    error(client.get(f"{API}/enrollments/get-enrollments/{elsewhere.id}/progress",
                     headers=student.headers), 404)
    assert count(app, LessonProgress) == 0
    assert fetch(app, Enrollment, Enrollment.id == eid).started_at is None


def test_get_alias_reads_without_changing(app, client, student, course):
    eid = enroll(client, student, course.id)["id"]
    l1, l2 = course.lesson_ids[:2]
    alias = f"{API}/enrollments/get-enrollments/{course.id}/lessons"

    untouched = ok(client.get(f"{alias}/{l1}/progress", headers=student.headers))
    assert untouched["lesson_progress"] == {
        "lesson_id": l1, "completed": False, "completed_at": None, "watch_time_seconds": 0,
        "started_at": None, "last_accessed_at": None}
    assert count(app, LessonProgress) == 0
    assert fetch(app, Enrollment, Enrollment.id == eid).last_accessed_at is None

    # POST without a body records a visit (not a completion); PUT completes.
    visited = ok(client.post(f"{alias}/{l2}/progress", headers=student.headers))
    assert visited["lesson_progress"]["completed"] is False
    assert visited["enrollment"]["completed_lessons"] == 0
    done = ok(client.put(f"{alias}/{l1}/progress", json={"completed": True},
                         headers=student.headers))
    assert done["lesson_progress"]["completed"] is True
    assert done["enrollment"]["progress_percent"] == 33.33

    before = fetch(app, LessonProgress, LessonProgress.lesson_id == l1)
    enrollment_before = fetch(app, Enrollment, Enrollment.id == eid)
    read = ok(client.get(f"{alias}/{l1}/progress", headers=student.headers))["lesson_progress"]
    assert read["completed"] is True and read["completed_at"] == done["lesson_progress"][
        "completed_at"]
    after = fetch(app, LessonProgress, LessonProgress.lesson_id == l1)
    assert after.last_accessed_at == before.last_accessed_at
    assert after.updated_at == before.updated_at
    assert fetch(app, Enrollment, Enrollment.id == eid).last_accessed_at == \
        enrollment_before.last_accessed_at
    assert count(app, LessonProgress) == 2


def test_progress_lists_lessons_in_course_order(app, client, instructor, student):
    built = build_course(client, instructor, "Ordered", modules=(("A", "B"), ("C",)))
    a, b, c = built.lesson_ids
    # A lesson inserted at the front of the first module comes first.
    first = add_lesson(client, instructor, built.module_ids[0], "Intro", position=0)
    eid = enroll(client, student, built.id)["id"]
    complete(client, student, eid, b)
    complete(client, student, eid, c)

    by_id = ok(client.get(f"{API}/enrollments/{eid}/progress", headers=student.headers))
    assert by_id["course_id"] == built.id
    lessons = by_id["lessons"]
    assert [x["lesson_id"] for x in lessons] == [first, a, b, c]
    assert [x["lesson_title"] for x in lessons] == ["Intro", "A", "B", "C"]
    assert [x["completed"] for x in lessons] == [False, False, True, True]
    assert [x["module_id"] for x in lessons] == [built.module_ids[0]] * 3 + [built.module_ids[1]]
    assert lessons[2]["completed_at"] is not None and lessons[0]["completed_at"] is None
    assert by_id["enrollment"]["progress_percent"] == 50.0
    assert (by_id["enrollment"]["completed_lessons"], by_id["enrollment"]["total_lessons"]) == \
        (2, 4)

    by_course = ok(client.get(f"{API}/enrollments/get-enrollments/{built.id}/progress",
                              headers=student.headers))
    assert by_course == by_id


# --- 6. access --------------------------------------------------------------------------------

def test_nobody_reads_or_changes_anothers_progress(app, client, instructor, student, actor):
    course = build_course(client, instructor, "Private progress")
    eid = enroll(client, student, course.id)["id"]
    complete(client, student, eid, course.lesson_ids[0])
    intruder, other_instructor, admin = actor(), actor("instructor"), actor("admin")
    lesson = course.lesson_ids[1]

    for who in (intruder, other_instructor):
        error(client.get(f"{API}/enrollments/{eid}", headers=who.headers), 404, "not_found")
        error(client.get(f"{API}/enrollments/{eid}/progress", headers=who.headers), 404)
        error(client.post(f"{API}/enrollments/{eid}/lessons/{lesson}/complete",
                          headers=who.headers), 404)
        error(client.delete(f"{API}/enrollments/{eid}", headers=who.headers), 404)
        error(client.get(f"{API}/enrollments/get-enrollments/{course.id}/progress",
                         headers=who.headers), 404)
    error(client.get(f"{API}/enrollments/999999", headers=student.headers), 404)

    # The course's instructor (and an admin) read the progress but never write it.
    for reader in (instructor, admin):
        got = ok(client.get(f"{API}/enrollments/{eid}", headers=reader.headers))["enrollment"]
        assert got["id"] == eid and got["completed_lessons"] == 1
        progress = ok(client.get(f"{API}/enrollments/{eid}/progress", headers=reader.headers))
        assert [x["completed"] for x in progress["lessons"]] == [True, False, False]
        error(client.post(f"{API}/enrollments/{eid}/lessons/{lesson}/complete",
                          headers=reader.headers), 404)
        error(client.delete(f"{API}/enrollments/{eid}", headers=reader.headers), 404)

    assert count(app, LessonProgress) == 1
    assert count(app, LessonProgress, LessonProgress.lesson_id == lesson) == 0
    row = fetch(app, Enrollment, Enrollment.id == eid)
    assert row.status == "active" and row.progress_percent == Decimal("33.33")


def test_course_enrollments_for_owner_and_admin_only(app, client, instructor, actor):
    course = build_course(client, instructor, "Taught")
    alice = actor("student", first_name="Alice", last_name="Able", email="alice@example.com")
    bob = actor("student", first_name="Bob", last_name="Baker", email="bob@example.com")
    alice_eid = enroll(client, alice, course.id)["id"]
    bob_eid = enroll(client, bob, course.id)["id"]
    complete(client, bob, bob_eid, course.lesson_ids[0])
    ok(client.delete(f"{API}/enrollments/{alice_eid}", headers=alice.headers))
    other_course = build_course(client, instructor, "Another", modules=(("O1",),))
    enroll(client, alice, other_course.id)

    path = f"{API}/courses/{course.id}/enrollments"
    body = ok(client.get(path, headers=instructor.headers))
    assert body["pagination"]["total"] == 2
    by_student = {e["student"]["id"]: e for e in body["enrollments"]}
    assert set(by_student) == {alice.id, bob.id}
    assert by_student[bob.id]["student"] == {"id": bob.id, "full_name": "Bob Baker",
                                             "email": "bob@example.com"}
    assert by_student[alice.id]["student"]["full_name"] == "Alice Able"
    assert by_student[bob.id]["progress_percent"] == 33.33
    assert (by_student[bob.id]["completed_lessons"], by_student[bob.id]["total_lessons"]) == (1, 3)
    assert by_student[alice.id]["status"] == "cancelled"
    assert all(e["course_id"] == course.id for e in body["enrollments"])
    assert "password_hash" not in str(body)

    active = ok(client.get(f"{path}?status=active", headers=instructor.headers))
    assert [e["id"] for e in active["enrollments"]] == [bob_eid]

    admin = actor("admin")
    assert ok(client.get(path, headers=admin.headers))["pagination"]["total"] == 2
    error(client.get(path, headers=actor("instructor").headers), 403)
    error(client.get(path, headers=bob.headers), 403)
    error(client.get(path), 401)
    error(client.get(f"{API}/courses/999999/enrollments", headers=instructor.headers), 404)


def test_my_enrollments_lists_only_mine(app, client, instructor, actor):
    first = build_course(client, instructor, "First", modules=(("F1",),))
    second = build_course(client, instructor, "Second", modules=(("S1",),))
    me, someone = actor(), actor()
    mine = [enroll(client, me, first.id)["id"], enroll(client, me, second.id)["id"]]
    enroll(client, someone, first.id)

    for path in (f"{API}/enrollments/get-enrollments", f"{API}/enrollments"):
        body = ok(client.get(path, headers=me.headers))
        assert sorted(e["id"] for e in body["enrollments"]) == sorted(mine)
        assert all(e["user_id"] == me.id for e in body["enrollments"])
        assert {e["course"]["title"] for e in body["enrollments"]} == {"First", "Second"}
        assert body["pagination"]["total"] == 2
    error(client.get(f"{API}/enrollments/get-enrollments"), 401)


# --- 7. dashboard and lists -------------------------------------------------------------------

@dataclass
class Scenario:
    me: Actor
    someone: Actor
    untouched: Built
    started: Built
    done: Built
    paid: Built
    left: Built
    done_eid: int
    admin_certificate_id: int


@pytest.fixture
def scenario(app, client, instructor, actor) -> Scenario:
    """One student with: a course not started, one 1/3 done (and a lesson viewed), one
    completed (its certificate issued on completion), a paid one (USD 10), one left (cancelled
    after viewing a lesson); payments in two currencies plus a failed and a refunded one; a
    certificate an admin issued (inserted through the ORM); and another student's records
    beside them."""
    me, someone = actor(), actor()
    untouched = build_course(client, instructor, "Not started", modules=(("N1",),))
    started = build_course(client, instructor, "Started", modules=(("S1", "S2", "S3"),))
    done = build_course(client, instructor, "Done", modules=(("D1",),))
    paid = build_course(client, instructor, "Paid", price=10, modules=(("P1",),))
    left = build_course(client, instructor, "Left", modules=(("X1",),))

    enroll(client, me, untouched.id)
    started_eid = enroll(client, me, started.id)["id"]
    done_eid = enroll(client, me, done.id)["id"]
    add_payment(app, me.id, paid.id, amount="10.00", currency="USD")
    enroll(client, me, paid.id)
    left_eid = enroll(client, me, left.id)["id"]
    add_payment(app, me.id, paid.id, amount="20.00", currency="EUR")
    add_payment(app, me.id, paid.id, amount="99.00", currency="USD", status="failed")
    add_payment(app, me.id, paid.id, amount="5.00", currency="USD", status="refunded",
                refunded_amount="5.00")
    add_payment(app, someone.id, paid.id, amount="10.00", currency="USD")

    complete(client, me, started_eid, started.lesson_ids[0])
    ok(client.post(f"{API}/enrollments/get-enrollments/{started.id}/lessons/"
                   f"{started.lesson_ids[1]}/progress", headers=me.headers))  # viewed only
    ok(client.post(f"{API}/enrollments/get-enrollments/{left.id}/lessons/"
                   f"{left.lesson_ids[0]}/progress", headers=me.headers))
    ok(client.delete(f"{API}/enrollments/{left_eid}", headers=me.headers))
    assert complete(client, me, done_eid, done.lesson_ids[0])["course_completed"] is True
    admin_certificate_id = add_certificate(app, me.id, paid.id)
    add_certificate(app, someone.id, done.id)
    enroll(client, someone, started.id)
    return Scenario(me, someone, untouched, started, done, paid, left, done_eid,
                    admin_certificate_id)


def test_completion_issues_one_certificate(app, scenario):
    issued = fetch(app, Certificate, Certificate.user_id == scenario.me.id,
                   Certificate.course_id == scenario.done.id)
    assert issued is not None and issued.status == "valid"
    assert issued.enrollment_id == scenario.done_eid
    assert issued.certificate_number.startswith(f"AIFA-{scenario.done.id}-{scenario.me.id}-")
    assert count(app, Certificate, Certificate.user_id == scenario.me.id) == 2


def test_dashboard_stats_and_recent_activity(app, client, scenario, actor):
    me = scenario.me
    empty = ok(client.get(f"{API}/users/dashboard", headers=actor().headers))
    assert empty == {"stats": {"enrolled_courses": 0, "in_progress_courses": 0,
                               "completed_courses": 0, "not_started_courses": 0,
                               "certificates": 0, "total_spent": []},
                     "recent_activity": []}

    dashboard = ok(client.get(f"{API}/users/dashboard", headers=me.headers))
    assert dashboard["stats"] == {
        "enrolled_courses": 4, "in_progress_courses": 1, "completed_courses": 1,
        "not_started_courses": 2, "certificates": 2,
        "total_spent": [{"currency": "EUR", "amount": 20.0},
                        {"currency": "USD", "amount": 10.0}]}
    activity = dashboard["recent_activity"]
    assert [(a["course_id"], a["lesson_id"], a["type"]) for a in activity] == [
        (scenario.done.id, scenario.done.lesson_ids[0], "lesson_completed"),
        (scenario.left.id, scenario.left.lesson_ids[0], "lesson_viewed"),
        (scenario.started.id, scenario.started.lesson_ids[1], "lesson_viewed"),
        (scenario.started.id, scenario.started.lesson_ids[0], "lesson_completed")]
    assert activity[0]["course_title"] == "Done" and activity[0]["lesson_title"] == "D1"
    stamps = [a["at"] for a in activity]
    assert stamps == sorted(stamps, reverse=True) and all(s.endswith("+00:00") for s in stamps)
    error(client.get(f"{API}/users/dashboard"), 401)


def test_enrolled_and_completed_course_lists(client, scenario):
    me = scenario.me
    enrolled = ok(client.get(f"{API}/users/enrolled-courses", headers=me.headers))
    assert enrolled == ok(client.get(f"{API}/users/my-courses", headers=me.headers))
    listed = {e["course_id"]: e for e in enrolled["enrollments"]}
    assert set(listed) == {scenario.untouched.id, scenario.started.id, scenario.done.id,
                           scenario.paid.id}
    assert all(e["user_id"] == me.id for e in enrolled["enrollments"])
    assert listed[scenario.started.id]["progress_percent"] == 33.33
    assert listed[scenario.started.id]["completed_lessons"] == 1
    assert listed[scenario.untouched.id]["progress_percent"] == 0.0
    assert listed[scenario.done.id]["status"] == "completed"
    assert listed[scenario.done.id]["course"]["title"] == "Done"
    assert listed[scenario.paid.id]["payment_id"] is not None
    assert enrolled["pagination"]["total"] == 4

    completed = ok(client.get(f"{API}/users/completed-courses", headers=me.headers))
    assert [e["course_id"] for e in completed["enrollments"]] == [scenario.done.id]
    assert completed["enrollments"][0]["progress_percent"] == 100.0
    assert completed["pagination"]["total"] == 1
    for path in ("enrolled-courses", "my-courses", "completed-courses"):
        error(client.get(f"{API}/users/{path}"), 401)


def test_users_certificates_lists_mine(app, client, scenario):
    me = scenario.me
    body = ok(client.get(f"{API}/users/certificates", headers=me.headers))
    issued = fetch(app, Certificate, Certificate.user_id == me.id,
                   Certificate.course_id == scenario.done.id)
    assert sorted(c["id"] for c in body["certificates"]) == sorted(
        [issued.id, scenario.admin_certificate_id])
    assert all(c["user_id"] == me.id for c in body["certificates"])
    assert {c["course_id"] for c in body["certificates"]} == {scenario.done.id,
                                                              scenario.paid.id}
    assert body["pagination"]["total"] == 2
    error(client.get(f"{API}/users/certificates"), 401)


def count_statements(app, client, path: str, headers: dict) -> int:
    with recorded_statements(app) as statements:
        ok(client.get(path, headers=headers))
    return len(statements)


@pytest.mark.parametrize("path", [
    "/users/enrolled-courses",
    "/users/my-courses",
    "/users/completed-courses",
    "/enrollments/get-enrollments",
    "/users/dashboard",
])
def test_query_count_does_not_grow_with_enrollments(app, client, instructor, student, path):
    courses = [build_course(client, instructor, f"Course {n}", modules=(("Only", "Other"),))
               for n in range(12)]

    def enroll_with_progress(n: int, built: Built) -> None:
        eid = enroll(client, student, built.id)["id"]
        complete(client, student, eid, built.lesson_ids[0])
        if n % 4 == 0:
            complete(client, student, eid, built.lesson_ids[1])  # some completed

    for n, built in enumerate(courses[:2]):
        enroll_with_progress(n, built)
    few = count_statements(app, client, API + path, student.headers)
    for n, built in enumerate(courses[2:], start=2):
        enroll_with_progress(n, built)
    many = count_statements(app, client, API + path, student.headers)
    assert count(app, Enrollment, Enrollment.user_id == student.id) == 12
    assert many == few


def test_query_count_of_a_courses_students_does_not_grow(app, client, instructor, actor):
    built = build_course(client, instructor, "Popular", modules=(("Only", "Other"),))
    path = f"{API}/courses/{built.id}/enrollments"

    def join() -> None:
        learner = actor()
        eid = enroll(client, learner, built.id)["id"]
        complete(client, learner, eid, built.lesson_ids[0])

    for _ in range(2):
        join()
    few = count_statements(app, client, path, instructor.headers)
    for _ in range(10):
        join()
    assert count_statements(app, client, path, instructor.headers) == few
    assert ok(client.get(path, headers=instructor.headers))["pagination"]["total"] == 12


def test_complete_route_with_only_watch_time_does_not_complete(client, instructor, student):
    course = build_course(client, instructor, "Watch only", modules=(("W1", "W2"),))
    enrollment = ok(client.post(f"{API}/enrollments", json={"course_id": course.id},
                                headers=student.headers), 201)["enrollment"]
    lesson_id = course.lesson_ids[0]
    body = ok(client.post(f"{API}/enrollments/{enrollment['id']}/lessons/{lesson_id}/complete",
                          json={"watch_time_seconds": 90}, headers=student.headers))
    assert body["lesson_progress"]["completed"] is False
    assert body["lesson_progress"]["watch_time_seconds"] == 90
    body = ok(client.post(f"{API}/enrollments/{enrollment['id']}/lessons/{lesson_id}/complete",
                          headers=student.headers))
    assert body["lesson_progress"]["completed"] is True


def test_a_progress_heartbeat_costs_one_statement_on_postgresql(app, client, instructor,
                                                                 student):
    """The write a video player sends every few seconds. On PostgreSQL one statement that
    commits on its own (the enrollment with the lesson and its progress row, the row's UPDATE,
    the enrollment's UPDATE returning the counts, as one WITH); elsewhere three: the enrollment,
    the progress row, the enrollment's counts (eleven before, then five; the caller comes from
    the token and the Redis mirror, utils/pipeline/user_mirror.py)."""
    postgres = app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql")
    built = build_course(client, instructor, "Watched")
    eid = enroll(client, student, built.id)["id"]
    complete(client, student, eid, built.lesson_ids[0], json={"watch_time_seconds": 5})
    path = f"{API}/enrollments/{eid}/lessons/{built.lesson_ids[0]}/complete"

    with recorded_statements(app) as statements:
        body = ok(client.post(path, headers=student.headers, json={"watch_time_seconds": 42}))

    assert len(statements) == (1 if postgres else 3), "\n".join(statements)
    if postgres:
        assert statements[0].lstrip().startswith("WITH target AS")
    assert not any("FROM users" in s for s in statements)
    assert body["lesson_progress"]["watch_time_seconds"] == 42
    assert body["lesson_progress"]["completed"] is False
    assert body["enrollment"]["completed_lessons"] == 0
    assert body["enrollment"]["total_lessons"] == 3
    assert fetch(app, LessonProgress, LessonProgress.enrollment_id == eid).watch_time_seconds == 42
