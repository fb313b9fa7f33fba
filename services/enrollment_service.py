"""Enrollment and progress.

- `enroll` is the one way into a course, for the enroll route and for payment settlement alike:
  free courses at once, paid ones only with a completed payment; prerequisites enforced; one row
  per (user, course), also when two requests race; a cancelled or refunded row is re-activated
  with its history.
- `record_progress` marks lessons and watch time; the percentage is always computed from the
  lessons the course has now, so lessons added later lower it for those still learning, while a
  completion already earned stands. Completion happens exactly once (an atomic conditional
  UPDATE), and only then are the certificate and the notification produced.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache

from flask import current_app
from sqlalchemy import (
    Integer,
    Select,
    String,
    and_,
    bindparam,
    case,
    false,
    func,
    literal,
    literal_column,
    null,
    select,
    true,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload

from models import (
    ENROLLMENT_STATUSES,
    OPEN_ENROLLMENT_STATUSES,
    Certificate,
    Course,
    Enrollment,
    Lesson,
    LessonProgress,
    Module,
    Notification,
    Payment,
    Subcategory,
    User,
    as_text,
    db,
    is_open_enrollment,
)
from services import certificate_service, course_service
from utils import read_only
from utils.errors import Conflict, Forbidden, NotFound, PaymentRequired
from utils.helpers import Columns, iso, money, utcnow
from utils.pagination import PageStatement

log = logging.getLogger("lms.enrollment")

OPEN_STATUSES = OPEN_ENROLLMENT_STATUSES  # the payment code reads it under this name


# --- enrolling --------------------------------------------------------------------------------

def completed_payment(user_id: int, course_id: int) -> Payment | None:
    return db.session.scalar(
        select(Payment).where(Payment.user_id == user_id, Payment.course_id == course_id,
                              Payment.status == "completed")
        .order_by(Payment.paid_at.desc(), Payment.id.desc()).limit(1))


def _payment_required(course: Course) -> PaymentRequired:
    return PaymentRequired(
        "This course is paid: complete a payment to enroll",
        details={"course_id": course.id, "price": money(course.price),
                 "currency": course.currency,
                 "pay_with": {"razorpay": "/api/v1/payments/razorpay/create-order",
                              "stripe": "/api/v1/payments/stripe/create-checkout"}})


def _check_prerequisites(user: User, course: Course) -> None:
    missing = course_service.missing_prerequisites(user.id, course.id)
    if missing:
        raise Forbidden(
            "Complete the prerequisite courses first: " + ", ".join(c.title for c in missing),
            code="prerequisites_missing",
            details={"missing_prerequisites": [{"id": c.id, "title": c.title, "slug": c.slug}
                                               for c in missing]})


def enroll(user: User, course_id: int, *, payment: Payment | None = None
           ) -> tuple[Enrollment, bool]:
    """Enroll `user`; returns (enrollment, created_or_reactivated). Idempotent."""
    course = course_service.visible_course(course_id, user)
    existing = db.session.scalar(select(Enrollment).where(
        Enrollment.user_id == user.id, Enrollment.course_id == course.id))
    if existing is not None and existing.status in OPEN_STATUSES:
        if payment is not None and existing.payment_id is None:
            existing.payment_id = payment.id
        return existing, False
    if course.status != "published":
        raise Conflict("This course is not open for enrollment", code="course_not_open")
    _check_prerequisites(user, course)
    if not course.is_free:
        payment = payment or completed_payment(user.id, course.id)
        if payment is None:
            raise _payment_required(course)
    now = utcnow()
    if existing is not None:  # cancelled or refunded: the same row, with its history
        existing.status = _reopened_status(existing)
        existing.cancelled_at = None
        existing.enrolled_at = now
        existing.payment_id = payment.id if payment else existing.payment_id
        db.session.flush()
        _complete_if_finished(existing)
        return existing, True
    return _insert(user, course, payment)


def _insert(user: User, course: Course, payment: Payment | None) -> tuple[Enrollment, bool]:
    """A new enrollment row; if another request enrolled the same user at the same moment,
    theirs stands (the unique constraint decides) and is returned with created=False."""
    enrollment = Enrollment(user_id=user.id, course_id=course.id, status="active",
                            enrolled_at=utcnow(), payment_id=payment.id if payment else None)
    try:
        with db.session.begin_nested():
            db.session.add(enrollment)
    except IntegrityError:
        winner = db.session.scalar(select(Enrollment).where(
            Enrollment.user_id == user.id, Enrollment.course_id == course.id))
        if winner is None:
            raise
        if payment is not None and winner.payment_id is None:
            winner.payment_id = payment.id
        return winner, False
    return enrollment, True


def _reopened_status(enrollment: Enrollment) -> str:
    """A re-opened enrollment keeps a completion already earned."""
    return "completed" if enrollment.completed_at is not None else "active"


def enroll_paid(user: User, course: Course, payment: Payment) -> tuple[Enrollment, bool]:
    """Enroll after a settled payment. The course, prerequisites and price were checked before
    the gateway was asked to charge; money received is never left without its enrollment, even
    if the course was archived in between."""
    existing = db.session.scalar(select(Enrollment).where(
        Enrollment.user_id == user.id, Enrollment.course_id == course.id))
    if existing is not None:
        if existing.status not in OPEN_STATUSES:
            existing.status, existing.cancelled_at = _reopened_status(existing), None
            existing.enrolled_at = utcnow()
        existing.payment_id = payment.id
        db.session.flush()
        _complete_if_finished(existing)
        return existing, True
    return _insert(user, course, payment)


def check_can_buy(user: User, course: Course) -> None:
    """What must hold before a gateway is asked to charge for `course`."""
    if course.status != "published":
        raise Conflict("This course is not open for enrollment", code="course_not_open")
    if course.is_free:
        raise Conflict("This course is free: enroll directly with POST /api/v1/enrollments",
                       code="course_is_free")
    enrolled = db.session.scalar(select(Enrollment.status).where(
        Enrollment.user_id == user.id, Enrollment.course_id == course.id))
    if enrolled in OPEN_STATUSES:
        raise Conflict("You are already enrolled in this course", code="already_enrolled")
    _check_prerequisites(user, course)


def cancel(enrollment: Enrollment, status: str = "cancelled") -> Enrollment:
    """End access (a student leaving a course, or a refund); progress is kept."""
    enrollment.status = status
    enrollment.cancelled_at = utcnow()
    return enrollment


# --- reading ----------------------------------------------------------------------------------

def own_enrollment(enrollment_id: int, user: User) -> Enrollment:
    """An enrollment the user may read: their own, a course they teach, or any for an admin.
    Anything else is 404, so ids of others' enrollments reveal nothing."""
    enrollment = db.session.get(Enrollment, enrollment_id)
    if enrollment is None:
        raise NotFound("Enrollment not found")
    if enrollment.user_id == user.id or user.role == "admin":
        return enrollment
    if user.role == "instructor" and db.session.scalar(
            select(Course.instructor_id).where(Course.id == enrollment.course_id)) == user.id:
        return enrollment
    raise NotFound("Enrollment not found")


def my_enrollment_for_course(user: User, course_id: int) -> Enrollment:
    enrollment = db.session.scalar(select(Enrollment).where(
        Enrollment.user_id == user.id, Enrollment.course_id == course_id))
    if enrollment is None:
        raise NotFound("You are not enrolled in this course")
    return enrollment


@dataclass
class Progress:
    total_lessons: int
    completed_lessons: int
    percent: Decimal


def _percent(done: int, total: int) -> Decimal:
    if total == 0:
        return Decimal("0.00")
    return (Decimal(done) * 100 / Decimal(total)).quantize(Decimal("0.01"), ROUND_HALF_UP)


def progress_by_enrollment(enrollments: list[Enrollment]) -> dict[int, Progress]:
    """Progress of many enrollments in two grouped queries (lessons per course, completed
    lessons per enrollment), whatever their number."""
    if not enrollments:
        return {}
    course_ids = {e.course_id for e in enrollments}
    totals = dict(db.session.execute(
        select(Module.course_id, func.count(Lesson.id)).join(Lesson, Lesson.module_id == Module.id)
        .where(Module.course_id.in_(course_ids)).group_by(Module.course_id)).all())
    done = dict(db.session.execute(
        select(LessonProgress.enrollment_id, func.count(LessonProgress.id))
        .join(Lesson, Lesson.id == LessonProgress.lesson_id)
        .where(LessonProgress.enrollment_id.in_([e.id for e in enrollments]),
               LessonProgress.completed.is_(True))
        .group_by(LessonProgress.enrollment_id)).all())
    result = {}
    for e in enrollments:
        total, completed = totals.get(e.course_id, 0), done.get(e.id, 0)
        result[e.id] = Progress(total, completed, _percent(completed, total))
    return result


def progress_of(enrollment: Enrollment) -> Progress:
    """One enrollment's progress in one statement (the two counts as scalar subqueries)."""
    total = (select(func.count(Lesson.id)).join(Module, Module.id == Lesson.module_id)
             .where(Module.course_id == enrollment.course_id).scalar_subquery())
    done = (select(func.count(LessonProgress.id))
            .join(Lesson, Lesson.id == LessonProgress.lesson_id)
            .where(LessonProgress.enrollment_id == enrollment.id,
                   LessonProgress.completed.is_(True)).scalar_subquery())
    total_lessons, completed = db.session.execute(select(total, done)).one()
    return Progress(total_lessons, completed, _percent(completed, total_lessons))


# A learner's own enrollment lists (the hot reads of issue 21) are read as rows: the page's
# select is of enrollment ids (what its count needs); the enrollment's columns, its course's
# card (course_service.CARD_COLUMNS: the course, its instructor, its subcategory) and the two
# lesson counts ride as its extra. An ORM entity per enrollment, course and instructor cost the
# page more than its statement did. The answer is what `enrollment_dict` writes from the
# entities, key for key: the enrollment's values below, the course by the catalog's own cards.
_E = Enrollment.__table__.c
_COURSES = Course.__table__
_CO = _COURSES.c
_LP = LessonProgress.__table__
_LPC = _LP.c
_L, _M = Lesson.__table__.c, Module.__table__.c
_ENROLLMENT = (_E.id, _E.user_id, _E.course_id, _E.status, _E.payment_id, _E.enrolled_at,
               _E.started_at, _E.last_accessed_at, _E.completed_at, _E.cancelled_at)
_N_ENROLLMENT = len(_ENROLLMENT)
_N_LEARNER = _N_ENROLLMENT + course_service.N_CARD  # then the two lesson counts


@lru_cache(maxsize=16)
def _learner_page(statuses: tuple[str, ...] | None) -> PageStatement:
    """The user's enrollments (those whose status is one of `statuses`, or all) newest first,
    each with its progress and its course's summary, in one statement: the lesson counts ride
    as two correlated scalar subqueries. Table columns throughout: one ORM attribute would send
    the whole statement through the ORM's compilation and result handling. Built once per set
    of statuses (a few: the open ones, the completed, each of the statuses a learner filters
    by), each status its own bound parameter, so the statement's SQL is rendered once; an IN
    of a bound list is rendered again at every run (as `is_open_enrollment` says)."""
    enrollments, users = Enrollment.__table__, User.__table__
    subcategories = Subcategory.__table__
    query = (select(_E.id)
             .select_from(enrollments.outerjoin(_COURSES, _CO.id == _E.course_id)
                          .outerjoin(users, users.c.id == _CO.instructor_id)
                          .outerjoin(subcategories, subcategories.c.id == _CO.subcategory_id))
             .where(_E.user_id == bindparam("user_id"))
             .order_by(_E.enrolled_at.desc(), _E.id.desc()))
    if statuses:
        query = query.where(_E.status.in_([literal(status) for status in statuses]))
    total = (select(func.count(_L.id)).join(Module.__table__, _M.id == _L.module_id)
             .where(_M.course_id == _E.course_id).correlate(enrollments).scalar_subquery())
    done = (select(func.count(_LPC.id)).join(Lesson.__table__, _L.id == _LPC.lesson_id)
            .where(_LPC.enrollment_id == _E.id, _LPC.completed.is_(True))
            .correlate(enrollments).scalar_subquery())
    return PageStatement(query, extra=(*_ENROLLMENT[1:], *course_service.CARD_COLUMNS, total,
                                       done))


# Every set of statuses a caller asks for, built at import (before gunicorn forks): the open
# ones, and each status alone (the completed courses, a learner's filter).
for _statuses in (None, OPEN_STATUSES, *((status,) for status in ENROLLMENT_STATUSES)):
    _learner_page(_statuses)


def learner_enrollment_page(user_id: int, statuses: tuple[str, ...] | None, page: int,
                            per_page: int) -> dict:
    """The user's enrollments in `statuses` (or all), newest first, with their progress and
    their courses' summaries: one statement, built once (`_learner_page`)."""
    rows, meta = _learner_page(tuple(statuses) if statuses else None).page(
        {"user_id": user_id}, page, per_page)
    return {"enrollments": [_learner_row(row) for row in rows], "pagination": meta}


def _learner_row(row) -> dict:
    total, done = row[_N_LEARNER], row[_N_LEARNER + 1]
    data = _enrollment_values(row[:_N_ENROLLMENT], total, done)
    if row[_N_ENROLLMENT] is not None:  # the course's id
        data["course"] = course_service.course_summary(
            course_service.card_of_row(row[_N_ENROLLMENT:]))
    return data


def enrollment_dict(enrollment: Enrollment, progress: Progress, *, course: bool = True) -> dict:
    data = _with_progress(enrollment.to_dict(), enrollment.completed_at, progress.total_lessons,
                          progress.completed_lessons)
    if course and enrollment.course is not None:
        data["course"] = course_service.course_summary(enrollment.course)
    return data


def _with_progress(data: dict, completed_at, total: int, done: int) -> dict:
    # A completion stands when lessons are added later; the lesson counts still tell the truth.
    data["progress_percent"] = 100.0 if completed_at else float(_percent(done, total))
    data["completed_lessons"] = done
    data["total_lessons"] = total
    return data


def certificate_of(enrollment: Enrollment) -> dict | None:
    """The certificate a completed enrollment earned (None before completion)."""
    if enrollment.completed_at is None:
        return None
    certificate = certificate_service.existing(enrollment.user_id, enrollment.course_id)
    return certificate.to_dict() if certificate is not None else None


def enrollments_query(*, course_id: int | None = None,
                      statuses: tuple[str, ...] | None = None, with_students: bool = False):
    query = (select(Enrollment)
             .options(joinedload(Enrollment.course).joinedload(Course.instructor),
                      joinedload(Enrollment.course).joinedload(Course.subcategory))
             .order_by(Enrollment.enrolled_at.desc(), Enrollment.id.desc()))
    if with_students:
        query = query.options(joinedload(Enrollment.user))
    if course_id is not None:
        query = query.where(Enrollment.course_id == course_id)
    if statuses:
        query = query.where(Enrollment.status.in_(statuses))
    return query


def _lessons_of(where) -> Select:
    """An enrollment's columns, its course's instructor and, one row per lesson of its course in
    course order, the lesson's and the enrollment's progress row's columns (one row of NULLs
    for a course without lessons)."""
    enrollments, modules, lessons = Enrollment.__table__, Module.__table__, Lesson.__table__
    # Read by position; the timestamps as the answer's text, under names of SQLAlchemy's own
    # (the enrollment's and the progress row's `completed_at` would share one).
    return (select(*as_text((*_ENROLLMENT, _CO.instructor_id, _L.id, _L.title, _M.id, _M.title,
                             _LPC.id, _LPC.completed, _LPC.completed_at,
                             _LPC.watch_time_seconds, _LPC.last_accessed_at),
                            lambda column: None))
            .select_from(enrollments.join(_COURSES, _CO.id == _E.course_id)
                         .outerjoin(modules, _M.course_id == _E.course_id)
                         .outerjoin(lessons, _L.module_id == _M.id)
                         .outerjoin(_LP, and_(_LPC.lesson_id == _L.id,
                                              _LPC.enrollment_id == _E.id)))
            .where(where)
            .order_by(_M.position, _M.id, _L.position, _L.id))


_PROGRESS_BY_ID = _lessons_of(_E.id == bindparam("enrollment_id"))
_PROGRESS_BY_COURSE = _lessons_of(and_(_E.user_id == bindparam("user_id"),
                                       _E.course_id == bindparam("course_id")))


def detailed_progress(user: User, *, enrollment_id: int | None = None,
                      course_id: int | None = None) -> dict:
    """An enrollment's progress lesson by lesson, in course order, in one statement of the
    columns the answer shows (no lesson bodies, no ORM objects): by its id (readable as
    `own_enrollment` says: its student, the course's instructor, an admin; 404 for anyone
    else), or the user's own by its course."""
    connection = db.session.connection()
    if enrollment_id is not None:
        rows = connection.execute(_PROGRESS_BY_ID, {"enrollment_id": enrollment_id}).all()
        if not rows or not (rows[0][1] == user.id or user.role == "admin" or (
                user.role == "instructor" and rows[0][len(_ENROLLMENT)] == user.id)):
            raise NotFound("Enrollment not found")
    else:
        rows = connection.execute(_PROGRESS_BY_COURSE, {"user_id": user.id,
                                                        "course_id": course_id}).all()
        if not rows:
            raise NotFound("You are not enrolled in this course")
    lessons = []
    for row in rows:
        (lesson_id, title, module_id, module_title, record, completed, completed_at, watched,
         accessed) = row[len(_ENROLLMENT) + 1:]
        if lesson_id is None:  # a module without lessons, or a course without modules
            continue
        recorded = record is not None
        lessons.append({
            "lesson_id": lesson_id, "lesson_title": title, "module_id": module_id,
            "module_title": module_title, "completed": bool(recorded and completed),
            "completed_at": iso(completed_at) if recorded else None,
            "watch_time_seconds": watched if recorded else 0,
            "last_accessed_at": iso(accessed) if recorded else None,
        })
    done = sum(1 for item in lessons if item["completed"])
    enrollment = rows[0][:len(_ENROLLMENT)]
    return {"enrollment": _enrollment_values(enrollment, len(lessons), done),
            "course_id": enrollment[2], "lessons": lessons}


class _EnrollmentRow(Columns):
    to_dict = Enrollment.to_dict
    progress_percent = None  # not selected: `_with_progress` writes it


class _ProgressRow(Columns):
    to_dict = LessonProgress.to_dict


_ENROLLMENT_NAMES = tuple(column.key for column in _ENROLLMENT)


def _enrollment_values(row: tuple, total: int, done: int) -> dict:
    """What `enrollment_dict(..., course=False)` writes, from the columns of `_ENROLLMENT`."""
    enrollment = _EnrollmentRow(_ENROLLMENT_NAMES, row)
    return _with_progress(enrollment.to_dict(), enrollment.completed_at, total, done)


# --- progress ---------------------------------------------------------------------------------

def _lesson_in_course(lesson_id: int, course_id: int) -> Lesson:
    lesson = db.session.scalar(select(Lesson).join(Module).where(
        Lesson.id == lesson_id, Module.course_id == course_id))
    if lesson is None:
        raise NotFound("This lesson is not part of the course")
    return lesson


def lesson_progress(enrollment: Enrollment, lesson_id: int) -> dict:
    lesson = _lesson_in_course(lesson_id, enrollment.course_id)
    record = db.session.scalar(select(LessonProgress).where(
        LessonProgress.enrollment_id == enrollment.id, LessonProgress.lesson_id == lesson.id))
    if record is None:
        return {"lesson_id": lesson.id, "completed": False, "completed_at": None,
                "watch_time_seconds": 0, "started_at": None, "last_accessed_at": None}
    return record.to_dict()


# A progress write (issue 21) in three statements and no ORM entity: the enrollment with the
# lesson's place in its course, its progress row's id and its certificate; the progress row
# written (an UPDATE, or for a lesson's first write an INSERT that a parallel first write turns
# into the same UPDATE) and returned; the enrollment's times set, returning it with its lesson
# counts. A fourth stores a changed percentage; completing the course goes through the entities
# (`_complete_if_finished`), as enrolling does. The write a video player sends every few
# seconds, a heartbeat, is one statement on PostgreSQL (`_heartbeat`, below).
_RECORD = (_LPC.lesson_id, _LPC.completed, _LPC.completed_at, _LPC.watch_time_seconds,
           _LPC.started_at, _LPC.last_accessed_at)
_RECORD_NAMES = tuple(column.key for column in _RECORD)


def _write_target(where, lesson_id=bindparam("lesson_id")) -> Select:
    enrollments, certificates = Enrollment.__table__, Certificate.__table__
    lesson = (select(_L.id).join(Module.__table__, _M.id == _L.module_id)
              .where(_L.id == lesson_id, _M.course_id == _E.course_id)
              .correlate(enrollments).scalar_subquery())
    return (select(*_ENROLLMENT, _E.progress_percent, lesson.label("lesson_found"),
                   _LPC.id.label("record_id"), *certificate_service.SHOWN)
            .select_from(enrollments
                         .outerjoin(_LP, and_(_LPC.enrollment_id == _E.id,
                                              _LPC.lesson_id == lesson_id))
                         .outerjoin(certificates,
                                    and_(certificates.c.user_id == _E.user_id,
                                         certificates.c.course_id == _E.course_id)))
            .where(where))


_BY_ID = _write_target(_E.id == bindparam("enrollment_id"))
_BY_COURSE = _write_target(and_(_E.user_id == bindparam("user_id"),
                                _E.course_id == bindparam("course_id")))
# Where the certificate's columns begin in a write target's row (more may follow them).
_CERTIFICATE_AT = len(_ENROLLMENT) + 3
# The lesson counts an UPDATE of an enrollment returns, written out: SQLite's RETURNING clause
# is compiled without table names, also inside a subquery, where `id` is then ambiguous.
_TOTAL_AFTER = literal_column(
    "(SELECT count(lessons.id) FROM lessons JOIN modules ON modules.id = lessons.module_id"
    " WHERE modules.course_id = enrollments.course_id)", Integer)
_DONE_AFTER = literal_column(
    "(SELECT count(lesson_progress.id) FROM lesson_progress"
    " JOIN lessons ON lessons.id = lesson_progress.lesson_id"
    " WHERE lesson_progress.enrollment_id = enrollments.id"
    " AND lesson_progress.completed = true)", Integer)


_NOW = bindparam("now", type_=_E.last_accessed_at.type)
_COUNTED = (update(Enrollment.__table__).where(_E.id == bindparam("enrollment_id"))
            .values(started_at=func.coalesce(_E.started_at, _NOW), last_accessed_at=_NOW)
            .returning(*_ENROLLMENT, _E.progress_percent, _TOTAL_AFTER, _DONE_AFTER))
_STORE_PERCENT = (update(Enrollment.__table__).where(_E.id == bindparam("enrollment_id"))
                  .values(progress_percent=bindparam("percent")))


def _record_changes(completed: bool | None, watched: bool) -> dict:
    """The SET of a progress row (parameters: now, watch): the furthest point reached counts; a
    completion keeps its first time; an un-completion clears it."""
    changes = {"last_accessed_at": _NOW}
    if watched:
        reached = func.coalesce(_LPC.watch_time_seconds, 0)
        watch = bindparam("watch", type_=Integer)
        changes["watch_time_seconds"] = case((reached >= watch, reached), else_=watch)
    if completed is True:
        changes["completed"] = True
        changes["completed_at"] = case((_LPC.completed.is_(True), _LPC.completed_at), else_=_NOW)
    elif completed is False:
        changes["completed"] = False
        changes["completed_at"] = case((_LPC.completed.is_(True), null()),
                                       else_=_LPC.completed_at)
    return changes


# A begun lesson's row written, one statement per kind of write, built once.
_RECORD_UPDATES = {
    (completed, watched): update(_LP).where(_LPC.id == bindparam("record_id"))
    .values(_record_changes(completed, watched)).returning(*_RECORD)
    for completed in (True, False, None) for watched in (True, False)}


# A heartbeat (watch time only, no completion changed) on PostgreSQL, in ONE statement that
# commits on its own connection (utils/read_only.statement_commits_alone), prepared: the write
# target above as a CTE; the progress row's UPDATE, or for a lesson's first write its INSERT
# (a parallel first write turning it into the same UPDATE), each only where the enrollment is
# the caller's, open, and the lesson its course's; the enrollment's times set, returning its
# lesson counts. The three statements, BEGIN and COMMIT cost PostgreSQL 1.13 ms of CPU and 1.54
# ms of wall time; this one 0.22 and 0.32 (psycopg2 loop on the bench data). The counts are the
# statement's snapshot's, which a heartbeat does not change: it completes nothing.
#
# Its commit does not wait for the WAL flush (`set_config(..., true)`: this transaction only;
# `commit_mode` NULL keeps the server's setting, HEARTBEAT_ASYNC_COMMIT=false). A crash can lose
# the last moments of heartbeats (wal_writer_delay, 200 ms by default, at most three times
# that); each heartbeat carries the furthest point reached and the next one writes it again.
# Completions, whose loss would not heal, commit synchronously in the session.
_COMMIT_MODE = func.set_config(
    "synchronous_commit", func.coalesce(bindparam("commit_mode", type_=String),
                                        func.current_setting("synchronous_commit")),
    True).label("commit_mode")


def _heartbeat(where) -> Select:
    """Its parameters: enrollment or course, learner, lesson, watch, now, commit_mode (no
    column's name: an UPDATE would take a parameter named as one of its columns as its value)."""
    lesson_id = bindparam("lesson", type_=Integer)
    target = _write_target(where, lesson_id).add_columns(_COMMIT_MODE).cte("target")
    t = target.c
    allowed = and_(t.user_id == bindparam("learner"), is_open_enrollment(t.status),
                   t.lesson_found.is_not(None))
    # NULL watch (a body without it) keeps the furthest point: greatest() skips NULLs.
    furthest = func.greatest(_LPC.watch_time_seconds, bindparam("watch", type_=Integer))
    updated = (update(_LP).where(_LPC.id == t.record_id, allowed)
               .values(watch_time_seconds=furthest, last_accessed_at=_NOW, updated_at=_NOW)
               .returning(*_RECORD).cte("updated"))
    first = postgresql_insert(_LP).from_select(
        ["enrollment_id", "lesson_id", "completed", "watch_time_seconds", "started_at",
         "last_accessed_at", "created_at", "updated_at"],
        select(t.id, lesson_id, false(),
               func.coalesce(bindparam("watch", type_=Integer), 0), _NOW, _NOW, _NOW, _NOW)
        .where(t.record_id.is_(None), allowed))
    inserted = (first.on_conflict_do_update(
        index_elements=[_LPC.enrollment_id, _LPC.lesson_id],
        set_={"watch_time_seconds": func.greatest(_LPC.watch_time_seconds,
                                                  first.excluded.watch_time_seconds),
              "last_accessed_at": _NOW, "updated_at": _NOW})
        .returning(*_RECORD).cte("inserted"))
    record = union_all(select(updated), select(inserted)).subquery("record")
    counted = (update(Enrollment.__table__).where(_E.id == t.id, allowed)
               .values(started_at=func.coalesce(_E.started_at, _NOW), last_accessed_at=_NOW,
                       updated_at=_NOW)
               .returning(*_ENROLLMENT, _E.progress_percent, _TOTAL_AFTER.label("total"),
                          _DONE_AFTER.label("done")).cte("counted"))
    return (select(target, *[column.label(f"record_{column.key}") for column in record.c],
                   *[column.label(f"counted_{column.key}") for column in counted.c])
            .select_from(target.outerjoin(record, true()).outerjoin(counted, true()))
            .execution_options(**{read_only.PREPARE: True}))


_HEARTBEAT_BY_ID = _heartbeat(_E.id == bindparam("enrollment"))
_HEARTBEAT_BY_COURSE = _heartbeat(and_(_E.user_id == bindparam("learner"),
                                       _E.course_id == bindparam("course")))


def _write_record(enrollment_id: int, record_id: int | None, lesson_id: int, now,
                  completed: bool | None, watch_time_seconds: int | None):
    connection = db.session.connection()
    watched = watch_time_seconds is not None
    values = {"now": now, "watch": watch_time_seconds}
    if record_id is not None:
        return connection.execute(_RECORD_UPDATES[completed, watched],
                                  {**values, "record_id": record_id}).one()
    dialect_insert = postgresql_insert if connection.dialect.name == "postgresql" \
        else sqlite_insert
    first = dialect_insert(_LP).values(
        enrollment_id=enrollment_id, lesson_id=lesson_id, started_at=now, last_accessed_at=now,
        completed=completed is True, completed_at=now if completed is True else None,
        watch_time_seconds=watch_time_seconds or 0)
    # ON CONFLICT's SET runs no column's onupdate: updated_at is named.
    return connection.execute(first.on_conflict_do_update(
        index_elements=[_LPC.enrollment_id, _LPC.lesson_id],
        set_={**_record_changes(completed, watched), "updated_at": utcnow()})
        .returning(*_RECORD), values).one()


def record_progress(user_id: int, lesson_id: int, *, completed: bool | None,
                    watch_time_seconds: int | None, enrollment_id: int | None = None,
                    course_id: int | None = None) -> dict:
    """Record a lesson's progress (idempotent) in the user's enrollment (by its id, or by its
    course); the answer: the lesson's progress, whether this completed the course, the
    enrollment's progress after it and its certificate (None before completion). Someone else's
    enrollment is 404, as a missing one is; a closed one 403; a lesson of another course 404."""
    where = {"enrollment_id": enrollment_id} if enrollment_id is not None else \
        {"user_id": user_id, "course_id": course_id}
    # The one statement runs on a connection of its own: inside a transaction of this session
    # (a caller that wrote first), it could wait for that transaction's own row locks.
    if completed is None and not db.session().in_transaction():
        answer = heartbeat(user_id, lesson_id, watch_time_seconds, where)
        if answer is not None:
            return answer
    connection = db.session.connection()
    found = connection.execute(_BY_ID if enrollment_id is not None else _BY_COURSE,
                               {**where, "lesson_id": lesson_id}).first()
    _check_target(found, user_id, enrollment_id)
    now = utcnow()
    record = _ProgressRow(_RECORD_NAMES, _write_record(
        found.id, found.record_id, lesson_id, now, completed, watch_time_seconds)).to_dict()
    counted = connection.execute(_COUNTED, {"enrollment_id": found.id, "now": now}).one()
    *_, stored, total, done = counted
    if counted.completed_at is None:
        if total and done >= total:  # the last lesson: completion, through the entities
            enrollment = db.session.get(Enrollment, found.id)
            finished, progress = _complete_if_finished(enrollment)
            return {"lesson_progress": record, "course_completed": finished,
                    "enrollment": enrollment_dict(enrollment, progress, course=False),
                    "certificate": certificate_of(enrollment)}
        percent = _percent(done, total)
        if percent != stored:
            connection.execute(_STORE_PERCENT, {"enrollment_id": found.id, "percent": percent})
    return _answer(found, record, counted)


def _check_target(found, user_id: int, enrollment_id: int | None) -> None:
    if found is None or found.user_id != user_id:
        raise NotFound("Enrollment not found" if enrollment_id is not None
                       else "You are not enrolled in this course")
    if found.status not in OPEN_STATUSES:
        raise Forbidden("This enrollment is not active", code="enrollment_inactive")
    if found.lesson_found is None:
        raise NotFound("This lesson is not part of the course")


def heartbeat(user_id: int, lesson_id: int, watch_time_seconds: int | None,
              where: dict) -> dict | None:
    """A heartbeat (watch time, no completion: `record_progress`'s answer) by its one statement
    (`_heartbeat`) on a connection of its own, on PostgreSQL; `where`: the enrollment's id
    (`enrollment_id`) or its course's (`course_id`). None on another database, and where it
    leaves something to write that its snapshot cannot decide: a stored percentage that differs
    from its counts (the course's lessons changed, or a completion of another lesson committed
    while the statement waited for the enrollment's row: its counts predate that completion), a
    course whose lessons are all done, or a progress row gone between its snapshot and its
    write. The caller's statements then decide, each with a snapshot of its own; rewriting the
    heartbeat there changes nothing (the furthest point is kept). Not for a caller inside a
    transaction that may have written the enrollment or its progress: the statement runs on
    another connection and would wait for that transaction's locks (`record_progress` checks).
    """
    if db.engine.dialect.name != "postgresql":
        return None
    if "enrollment_id" in where:
        statement, parameters = _HEARTBEAT_BY_ID, {"enrollment": where["enrollment_id"]}
    else:
        statement, parameters = _HEARTBEAT_BY_COURSE, {"course": where["course_id"]}
    async_commit = current_app.config["HEARTBEAT_ASYNC_COMMIT"]
    with read_only.statement_commits_alone(db.engine) as connection:
        row = connection.execute(statement, {
            **parameters, "learner": user_id, "lesson": lesson_id, "watch": watch_time_seconds,
            "now": utcnow(), "commit_mode": "off" if async_commit else None}).first()
        connection.commit()  # autocommit on psycopg2: nothing to send
    _check_target(row, user_id, where.get("enrollment_id"))
    width = len(row._fields)
    counted = row[width - len(_ENROLLMENT) - 3:]
    record = row[width - len(_RECORD) - len(_ENROLLMENT) - 3:width - len(_ENROLLMENT) - 3]
    *_, stored, total, done = counted
    if row.record_lesson_id is None or (row.counted_completed_at is None and (
            (total and done >= total) or _percent(done, total) != stored)):
        return None
    return _answer(row, _ProgressRow(_RECORD_NAMES, record).to_dict(), counted)


def _answer(found, record: dict, counted) -> dict:
    """The answer of a progress write that completed no course, from its target row (`found`),
    the progress row written and the enrollment's row after it (`counted`: its columns,
    percentage, total, done)."""
    *columns, _, total, done = counted
    completed_at = columns[_ENROLLMENT_NAMES.index("completed_at")]
    certificate = found[_CERTIFICATE_AT:_CERTIFICATE_AT + len(certificate_service.SHOWN)]
    if completed_at is None or certificate[0] is None:
        certificate = None
    else:
        certificate = certificate_service.as_dict(certificate)
    return {"lesson_progress": record, "course_completed": False,
            "enrollment": _enrollment_values(columns, total, done),
            "certificate": certificate}


def _complete_if_finished(enrollment: Enrollment) -> tuple[bool, Progress]:
    progress = progress_of(enrollment)
    if enrollment.completed_at is None:
        enrollment.progress_percent = progress.percent
    if progress.total_lessons == 0 or progress.completed_lessons < progress.total_lessons:
        return False, progress
    # Exactly once, whichever worker gets here first.
    won = db.session.execute(
        update(Enrollment)
        .where(Enrollment.id == enrollment.id, Enrollment.completed_at.is_(None))
        .values(completed_at=utcnow(), status="completed", progress_percent=Decimal("100.00"))
        .execution_options(synchronize_session=False)).rowcount
    db.session.refresh(enrollment)
    if won != 1:
        return False, progress
    on_course_completed(enrollment)
    return True, progress


def on_course_completed(enrollment: Enrollment) -> None:
    """What completing a course produces: the certificate and a notification."""
    course = db.session.get(Course, enrollment.course_id)
    certificate_service.issue_for_enrollment(enrollment)
    db.session.add(Notification(
        user_id=enrollment.user_id, kind="course_update", title="Course completed",
        message=f"Congratulations! You completed \u201c{course.title}\u201d.",
        link=f"/courses/{course.id}", data={"course_id": course.id,
                                            "enrollment_id": enrollment.id}))


# --- dashboards -------------------------------------------------------------------------------

# The dashboard in one statement, built once with bind parameters (building it per request cost
# more Python than running it) and with its constants inline (PostgreSQL cannot type a bound
# constant in a CASE or a UNION, and a statement it cannot prepare is planned at every request):
# the enrollment counts (an aggregate: always one row) and the certificates' count, joined with
# the money spent by currency (rows of kind 's') and the recent activity (kind 'r'). One round
# trip instead of three (issue 21); with neither money nor activity, the one row carries the
# counts and NULLs.
_P, _CE = Payment.__table__.c, Certificate.__table__.c
_ONE, _ZERO = literal_column("1"), literal_column("0")
_DASHBOARD_COUNTS = (
    select(func.count(_E.id).label("enrolled"),
           func.sum(case((_E.status == literal_column("'completed'"), _ONE), else_=_ZERO))
           .label("completed"),
           func.sum(case((and_(_E.status == literal_column("'active'"),
                               _E.started_at.is_not(None)), _ONE), else_=_ZERO))
           .label("in_progress"))
    .where(_E.user_id == bindparam("user_id"), is_open_enrollment(_E.status))
    .subquery("counts"))
_DASHBOARD_CERTIFICATES = (
    select(func.count(_CE.id))
    .where(_CE.user_id == bindparam("user_id"), _CE.status == literal_column("'valid'"))
    .scalar_subquery())
_RECENT = (
    select(_LPC.id, _LPC.completed, _LPC.lesson_id, _LPC.last_accessed_at,
           _L.title.label("lesson_title"), _CO.id.label("course_id"),
           _CO.title.label("course_title"))
    .select_from(_LP.join(Enrollment.__table__, _E.id == _LPC.enrollment_id)
                 .join(Lesson.__table__, _L.id == _LPC.lesson_id)
                 .join(_COURSES, _CO.id == _E.course_id))
    .where(_E.user_id == bindparam("user_id"))
    .order_by(_LPC.last_accessed_at.desc(), _LPC.id.desc())
    .limit(bindparam("recent"))
    .subquery("recent"))
_DASHBOARD_LISTED = union_all(
    # The first select's column types are the union's, so each NULL is typed as its column.
    select(literal_column("'s'").label("kind"), _P.currency.label("currency"),
           func.sum(_P.amount - _P.refunded_amount).label("amount"),
           type_coerce(null(), _LPC.id.type).label("progress_id"),
           type_coerce(null(), _LPC.completed.type).label("done"),
           type_coerce(null(), _LPC.lesson_id.type).label("lesson_id"),
           type_coerce(null(), _LPC.last_accessed_at.type).label("at"),
           type_coerce(null(), _L.title.type).label("lesson_title"),
           type_coerce(null(), _CO.id.type).label("course_id"),
           type_coerce(null(), _CO.title.type).label("course_title"))
    .where(_P.user_id == bindparam("user_id"), _P.status.in_(("completed", "refunded")))
    .group_by(_P.currency),
    select(literal_column("'r'"), null(), null(), *_RECENT.c),
).subquery("listed")
_DASHBOARD = (
    select(_DASHBOARD_COUNTS, _DASHBOARD_CERTIFICATES.label("certificates"),
           *_DASHBOARD_LISTED.c)
    .select_from(_DASHBOARD_COUNTS.outerjoin(_DASHBOARD_LISTED, true()))
    # The money by currency first, then the activity in the order it was chosen.
    .order_by(_DASHBOARD_LISTED.c.kind.desc(), _DASHBOARD_LISTED.c.currency,
              _DASHBOARD_LISTED.c.at.desc(), _DASHBOARD_LISTED.c.progress_id.desc()))


def dashboard(user: User, recent: int = 10) -> dict:
    """The student's dashboard in one statement (`_DASHBOARD`)."""
    rows = db.session.connection().execute(
        _DASHBOARD, {"user_id": user.id, "recent": recent}).all()
    enrolled, completed, in_progress, certificates = (value or 0 for value in rows[0][:4])
    return {
        "stats": {
            "enrolled_courses": enrolled,
            "in_progress_courses": in_progress,
            "completed_courses": completed,
            "not_started_courses": enrolled - completed - in_progress,
            "certificates": certificates,
            "total_spent": [{"currency": row.currency, "amount": money(row.amount)}
                            for row in rows if row.kind == "s" and row.amount],
        },
        "recent_activity": [
            {"type": "lesson_completed" if row.done else "lesson_viewed",
             "lesson_id": row.lesson_id, "lesson_title": row.lesson_title,
             "course_id": row.course_id, "course_title": row.course_title,
             "at": iso(row.at)}
            for row in rows if row.kind == "r"],
    }
