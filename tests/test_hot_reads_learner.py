"""The learner's hot reads and the progress write answer exactly what the entities say (issue 21).

These answers are built from columns rather than from ORM entities and their `to_dict`, for
speed; each is compared here, whole (every key, in order, with its JSON type), with the answer
the entities give: `to_dict` of the rows read back through the ORM, the course as
`course_service.course_summary` shows it. The fixture holds what varies: a paid course with a
subcategory and an instructor's public card, a finished course with its certificate and
notification, one not started, a cancelled one, refunds in two currencies, read and unread
notifications with and without data, a revoked certificate, pages past the end.
"""
from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from sqlalchemy import func, select

from models import (
    OPEN_ENROLLMENT_STATUSES,
    Certificate,
    Course,
    Enrollment,
    Lesson,
    LessonProgress,
    MasterCategory,
    Module,
    Notification,
    Payment,
    Subcategory,
    db,
)
from services import course_service
from tests.support.assertions import ok
from tests.support.queries import recorded_statements, sent_queries
from tests.support.learning import (  # noqa: F401 (actor: a fixture)
    actor,
    add_certificate,
    add_payment,
    build_course,
    complete,
    enroll,
)
from utils.helpers import iso, pagination_meta, utcnow

API = "/api/v1"


def typed(value):
    """A JSON value with its key order and each scalar's type made comparable: 1 != 1.0 and
    {"a", "b"} != {"b", "a"} here."""
    if isinstance(value, dict):
        return [(key, typed(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [typed(item) for item in value]
    return (type(value).__name__, value)


def same_answer(response, expected: dict) -> None:
    assert response.status_code == 200, response.get_data(as_text=True)
    answer = json.loads(response.get_data(), object_pairs_hook=dict)
    assert typed(answer) == typed(expected), (
        f"\nanswer:   {json.dumps(answer)}\nentities: {json.dumps(expected)}")


# --- what the entities say ----------------------------------------------------------------------

def _progress(enrollment: Enrollment) -> tuple[int, int]:
    total = db.session.scalar(select(func.count(Lesson.id)).join(Module)
                              .where(Module.course_id == enrollment.course_id))
    done = db.session.scalar(select(func.count(LessonProgress.id)).join(Lesson).where(
        LessonProgress.enrollment_id == enrollment.id, LessonProgress.completed.is_(True)))
    return total, done


def enrollment_entity(enrollment: Enrollment, *, course: bool = True) -> dict:
    total, done = _progress(enrollment)
    percent = (Decimal(done) * 100 / Decimal(total)).quantize(Decimal("0.01"), ROUND_HALF_UP) \
        if total else Decimal("0.00")
    data = enrollment.to_dict()
    data["progress_percent"] = 100.0 if enrollment.completed_at else float(percent)
    data["completed_lessons"] = done
    data["total_lessons"] = total
    if course:
        data["course"] = course_service.course_summary(enrollment.course)
    return data


def enrollments_entities(app, user_id: int, statuses, page: int, per_page: int) -> dict:
    with app.app_context():
        query = select(Enrollment).where(Enrollment.user_id == user_id)
        if statuses:
            query = query.where(Enrollment.status.in_(statuses))
        rows = db.session.scalars(
            query.order_by(Enrollment.enrolled_at.desc(), Enrollment.id.desc())).all()
        shown = rows[(page - 1) * per_page:page * per_page]
        return {"enrollments": [enrollment_entity(e) for e in shown],
                "pagination": pagination_meta(page, per_page, len(rows))}


def certificates_entities(app, user_id: int, page: int, per_page: int) -> dict:
    with app.app_context():
        rows = db.session.scalars(select(Certificate).where(Certificate.user_id == user_id)
                                  .order_by(Certificate.issued_at.desc(),
                                            Certificate.id.desc())).all()
        return {"certificates": [c.to_dict() for c in rows[(page - 1) * per_page:
                                                            page * per_page]],
                "pagination": pagination_meta(page, per_page, len(rows))}


def notifications_entities(app, user_id: int, unread_only: bool, page: int,
                           per_page: int) -> dict:
    with app.app_context():
        query = select(Notification).where(Notification.user_id == user_id)
        if unread_only:
            query = query.where(Notification.is_read.is_(False))
        rows = db.session.scalars(query.order_by(Notification.created_at.desc(),
                                                 Notification.id.desc())).all()
        unread = db.session.scalar(select(func.count(Notification.id)).where(
            Notification.user_id == user_id, Notification.is_read.is_(False)))
        return {"notifications": [n.to_dict() for n in rows[(page - 1) * per_page:
                                                             page * per_page]],
                "pagination": pagination_meta(page, per_page, len(rows)),
                "unread_count": unread}


def progress_entities(app, enrollment_id: int) -> dict:
    with app.app_context():
        enrollment = db.session.get(Enrollment, enrollment_id)
        records = {r.lesson_id: r for r in db.session.scalars(select(LessonProgress).where(
            LessonProgress.enrollment_id == enrollment_id))}
        lessons = db.session.execute(
            select(Lesson, Module).join(Module).where(Module.course_id == enrollment.course_id)
            .order_by(Module.position, Module.id, Lesson.position, Lesson.id)).all()
        items = []
        for lesson, module in lessons:
            record = records.get(lesson.id)
            items.append({
                "lesson_id": lesson.id, "lesson_title": lesson.title, "module_id": module.id,
                "module_title": module.title, "completed": bool(record and record.completed),
                "completed_at": iso(record.completed_at) if record else None,
                "watch_time_seconds": record.watch_time_seconds if record else 0,
                "last_accessed_at": iso(record.last_accessed_at) if record else None})
        return {"enrollment": enrollment_entity(enrollment, course=False),
                "course_id": enrollment.course_id, "lessons": items}


def recorded_entities(app, enrollment_id: int, lesson_id: int, finished: bool) -> dict:
    with app.app_context():
        enrollment = db.session.get(Enrollment, enrollment_id)
        record = db.session.scalar(select(LessonProgress).where(
            LessonProgress.enrollment_id == enrollment_id, LessonProgress.lesson_id == lesson_id))
        certificate = db.session.scalar(select(Certificate).where(
            Certificate.user_id == enrollment.user_id,
            Certificate.course_id == enrollment.course_id))
        return {"lesson_progress": record.to_dict(), "course_completed": finished,
                "enrollment": enrollment_entity(enrollment, course=False),
                "certificate": certificate.to_dict()
                if certificate is not None and enrollment.completed_at else None}


# --- the learner's world ------------------------------------------------------------------------

class Learner:
    def __init__(self, app, client, actor):
        self.app, self.client = app, client
        self.teacher = actor("instructor", bio="Teaches", headline="Ünïcode “headline”",
                             profile_picture="/files/t.png")
        self.me = actor()
        self.paid = build_course(client, self.teacher, "Paid ✓", modules=(("P1", "P2"), ("P3",)),
                                 price="49.90", currency="USD")
        self.done = build_course(client, self.teacher, "Done", modules=(("D1", "D2"),))
        self.idle = build_course(client, self.teacher, "Idle", modules=(("I1",),))
        self.left = build_course(client, self.teacher, "Left", modules=(("X1",),))
        with app.app_context():
            master = MasterCategory(name="Data", slug="data")
            db.session.add(master)
            db.session.flush()
            sub = Subcategory(master_category_id=master.id, name="ML", slug="ml")
            db.session.add(sub)
            db.session.flush()
            course = db.session.get(Course, self.paid.id)
            course.subcategory_id, course.duration_hours = sub.id, Decimal("12.50")
            course.learning_outcomes, course.short_description = ["a", "b"], "Short"
            db.session.commit()
        self.payment = add_payment(app, self.me.id, self.paid.id, amount="49.90")
        add_payment(app, self.me.id, self.idle.id, amount="20.00", currency="EUR",
                    status="refunded", refunded_amount="5.00")
        self.paid_eid = enroll(client, self.me, self.paid.id)["id"]
        self.done_eid = enroll(client, self.me, self.done.id)["id"]
        self.idle_eid = enroll(client, self.me, self.idle.id)["id"]
        self.left_eid = enroll(client, self.me, self.left.id)["id"]
        ok(client.delete(f"{API}/enrollments/{self.left_eid}", headers=self.me.headers))
        complete(client, self.me, self.paid_eid, self.paid.lesson_ids[0])
        complete(client, self.me, self.paid_eid, self.paid.lesson_ids[1],
                 json={"watch_time_seconds": 30})
        for lesson_id in self.done.lesson_ids:
            complete(client, self.me, self.done_eid, lesson_id)
        add_certificate(app, self.me.id, self.idle.id)
        with app.app_context():
            revoked = db.session.scalar(select(Certificate).where(
                Certificate.course_id == self.idle.id))
            revoked.status, revoked.revoked_at = "revoked", utcnow()
            revoked.revoked_reason, revoked.completion_date = "test", date(2026, 1, 31)
            now = utcnow()
            db.session.add_all([
                Notification(user_id=self.me.id, kind="announcement", title="Read one",
                             message="m", link="https://example.com/x", is_read=True,
                             read_at=now, created_at=now - timedelta(days=2)),
                Notification(user_id=self.me.id, kind="payment", title="Paid",
                             message="Ünïcode", data={"amount": 1.5, "list": [1, None]},
                             created_at=now - timedelta(days=1)),
                Notification(user_id=self.me.id, kind="system", title="Same instant",
                             message="m", created_at=now - timedelta(days=1)),
            ])
            db.session.commit()


@pytest.fixture
def learner(app, client, actor) -> Learner:
    return Learner(app, client, actor)


# --- the reads ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path, statuses", [
    ("/users/enrolled-courses", OPEN_ENROLLMENT_STATUSES),
    ("/users/my-courses", OPEN_ENROLLMENT_STATUSES),
    ("/users/completed-courses", ("completed",)),
    ("/enrollments", None),
    ("/enrollments/get-enrollments?status=cancelled", ("cancelled",)),
])
@pytest.mark.parametrize("page, per_page", [(1, 20), (1, 2), (2, 2), (9, 2)])
def test_enrollment_lists_answer_what_the_entities_say(app, client, learner, path, statuses,
                                                       page, per_page):
    joiner = "&" if "?" in path else "?"
    response = client.get(f"{API}{path}{joiner}page={page}&per_page={per_page}",
                          headers=learner.me.headers)
    same_answer(response, enrollments_entities(app, learner.me.id, statuses, page, per_page))


@pytest.mark.parametrize("path", ["/users/certificates", "/certificates"])
@pytest.mark.parametrize("page, per_page", [(1, 20), (2, 1), (5, 1)])
def test_certificate_lists_answer_what_the_entities_say(app, client, learner, path, page,
                                                        per_page):
    response = client.get(f"{API}{path}?page={page}&per_page={per_page}",
                          headers=learner.me.headers)
    same_answer(response, certificates_entities(app, learner.me.id, page, per_page))


@pytest.mark.parametrize("unread", [False, True])
@pytest.mark.parametrize("page, per_page", [(1, 20), (2, 2), (7, 2)])
def test_notification_lists_answer_what_the_entities_say(app, client, learner, unread, page,
                                                         per_page):
    response = client.get(f"{API}/notifications?unread={str(unread).lower()}&page={page}"
                          f"&per_page={per_page}", headers=learner.me.headers)
    same_answer(response, notifications_entities(app, learner.me.id, unread, page, per_page))
    same_answer(client.get(f"{API}/notifications/unread-count", headers=learner.me.headers),
                {"unread_count": 3})


def test_progress_lesson_by_lesson_answers_what_the_entities_say(app, client, learner):
    for eid, course_id in ((learner.paid_eid, learner.paid.id), (learner.done_eid,
                                                                 learner.done.id),
                           (learner.idle_eid, learner.idle.id)):
        expected = progress_entities(app, eid)
        same_answer(client.get(f"{API}/enrollments/{eid}/progress",
                               headers=learner.me.headers), expected)
        same_answer(client.get(f"{API}/enrollments/get-enrollments/{course_id}/progress",
                               headers=learner.me.headers), expected)
        with app.app_context():
            single = {"enrollment": enrollment_entity(db.session.get(Enrollment, eid))}
        same_answer(client.get(f"{API}/enrollments/{eid}", headers=learner.me.headers), single)


def test_dashboard_answers_what_the_rows_say(app, client, learner):
    with app.app_context():
        recent = db.session.execute(
            select(LessonProgress, Lesson, Course).join(Lesson).join(Enrollment)
            .join(Course, Course.id == Enrollment.course_id)
            .where(Enrollment.user_id == learner.me.id)
            .order_by(LessonProgress.last_accessed_at.desc(), LessonProgress.id.desc())
            .limit(10)).all()
        activity = [{"type": "lesson_completed" if p.completed else "lesson_viewed",
                     "lesson_id": lesson.id, "lesson_title": lesson.title,
                     "course_id": course.id, "course_title": course.title,
                     "at": iso(p.last_accessed_at)} for p, lesson, course in recent]
    expected = {"stats": {"enrolled_courses": 3, "in_progress_courses": 1,
                          "completed_courses": 1, "not_started_courses": 1, "certificates": 1,
                          "total_spent": [{"currency": "EUR", "amount": 15.0},
                                          {"currency": "USD", "amount": 49.9}]},
                "recent_activity": activity}
    assert len(activity) == 4
    same_answer(client.get(f"{API}/users/dashboard", headers=learner.me.headers), expected)


def test_every_outline_says_what_its_student_completed(client, learner):
    """The course detail, its modules and one module read the outline in one statement, with
    each lesson's completion for the course's student only (P1 of the paid course; P2 has
    watch time only)."""
    paid, done = learner.paid, {learner.paid.lesson_ids[0]}

    def completion(modules) -> dict:
        return {lesson["id"]: lesson["completed"] for module in modules
                for lesson in module["lessons"]}

    for who, expected in ((learner.me, {i: i in done for i in paid.lesson_ids}),
                          (learner.teacher, dict.fromkeys(paid.lesson_ids))):
        detail = ok(client.get(f"{API}/courses/{paid.id}", headers=who.headers))["course"]
        listed = ok(client.get(f"{API}/courses/{paid.id}/modules", headers=who.headers))
        assert completion(detail["modules"]) == completion(listed["modules"]) == expected
        assert listed["access"] == detail["access"] == ("enrolled" if who is learner.me
                                                         else "owner")
        for module_id, module in zip(paid.module_ids, listed["modules"]):
            one = ok(client.get(f"{API}/modules/{module_id}", headers=who.headers))
            assert one["module"] == module and one["access"] == listed["access"]


def test_each_learner_read_runs_prepared_on_postgresql(app, client, learner):
    """Every statement of the learner's reads runs as a prepared statement (a bound constant
    PostgreSQL cannot type would send one as text, planned at every request: the dashboard's
    counts were, until their constants were written inline)."""
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        pytest.skip("prepared statements are PostgreSQL's (psycopg2); the SQLite pass has none")
    headers = learner.me.headers
    for path in ("/users/dashboard", "/users/enrolled-courses", "/users/certificates",
                 "/notifications", "/notifications/unread-count",
                 f"/enrollments/{learner.paid_eid}/progress", f"/courses/{learner.paid.id}"):
        for _ in range(2):  # the first fills the caller's mirror and prepares
            ok(client.get(f"{API}{path}", headers=headers))
        with sent_queries(app) as sent:
            ok(client.get(f"{API}{path}", headers=headers))
        assert sent and all(query.startswith("EXECUTE lms_") for query in sent), (path, sent)

# --- the write ----------------------------------------------------------------------------------

def test_progress_writes_answer_what_the_entities_say(app, client, learner, actor):
    me, course = learner.me, learner.paid
    path = f"{API}/enrollments/{learner.paid_eid}/lessons/{{}}/complete"

    def write(lesson_id: int, body, finished: bool = False, route: str | None = None) -> None:
        url = route or path.format(lesson_id)
        kwargs = {"json": body} if body is not None else {}
        response = client.post(url, headers=me.headers, **kwargs)
        same_answer(response, recorded_entities(app, learner.paid_eid, lesson_id, finished))

    write(course.lesson_ids[2], {"watch_time_seconds": 7})  # a new row, watch time only
    write(course.lesson_ids[2], {"watch_time_seconds": 3})  # the furthest point stands
    write(course.lesson_ids[1], {"watch_time_seconds": 40})  # an existing row
    write(course.lesson_ids[0], {"completed": False})  # un-completed
    write(course.lesson_ids[0], None)  # completed again (no body)
    write(course.lesson_ids[1], {})
    by_course = f"{API}/enrollments/get-enrollments/{course.id}/lessons/{{}}/progress"
    write(course.lesson_ids[2], {"watch_time_seconds": 50},
          route=by_course.format(course.lesson_ids[2]))
    write(course.lesson_ids[2], {"completed": True}, finished=True,
          route=by_course.format(course.lesson_ids[2]))  # the course completes: a certificate
    write(course.lesson_ids[2], {"watch_time_seconds": 60})  # later: the certificate stays
    write(course.lesson_ids[0], {"completed": False})  # a completion already earned stands
    with app.app_context():
        assert db.session.get(Enrollment, learner.paid_eid).status == "completed"
        assert db.session.scalar(select(func.count(Notification.id)).where(
            Notification.user_id == me.id, Notification.title == "Course completed")) == 2
        assert db.session.scalar(select(func.count(Payment.id))) == 2


def test_progress_writes_cost_their_pinned_statements(app, client, learner):
    """The heartbeat on a lesson already begun and a lesson's first write: one statement on
    PostgreSQL, run prepared from the second time (services/enrollment_service._heartbeat), and
    three elsewhere (the enrollment with the lesson, the progress row, the enrollment's times
    with its counts); a completion that changes the percentage four, the last storing it."""
    course, me = learner.idle, learner.me
    postgres = app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql")
    path = f"{API}/enrollments/{learner.idle_eid}/lessons/{course.lesson_ids[0]}/complete"
    with recorded_statements(app) as statements:
        first = ok(client.post(path, json={"watch_time_seconds": 5}, headers=me.headers))
    assert first["lesson_progress"]["watch_time_seconds"] == 5
    if postgres:  # a first write: the statement's INSERT ... ON CONFLICT
        assert len(statements) == 1 and "ON CONFLICT" in statements[0], "\n".join(statements)
    else:
        assert len(statements) == 3 and "ON CONFLICT" in statements[1], "\n".join(statements)
    with recorded_statements(app) as statements, sent_queries(app) as sent:
        again = ok(client.post(path, json={"watch_time_seconds": 9}, headers=me.headers))
    assert again["lesson_progress"]["watch_time_seconds"] == 9
    assert again["lesson_progress"]["started_at"] == first["lesson_progress"]["started_at"]
    assert len(statements) == (1 if postgres else 3), "\n".join(statements)
    if postgres:
        assert len(sent) == 1 and sent[0].startswith("EXECUTE lms_"), sent
    other = learner.paid
    path = f"{API}/enrollments/{learner.paid_eid}/lessons/{other.lesson_ids[1]}/complete"
    with recorded_statements(app) as statements:
        body = ok(client.post(path, json={"completed": True}, headers=me.headers))
    assert len(statements) == 4, "\n".join(statements)
    assert body["enrollment"]["progress_percent"] == 66.67
    assert not any("FROM users" in s for s in statements)
