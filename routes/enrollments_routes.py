"""Enrollment and lesson progress. A user sees only their own (others' ids are 404);
instructors see those of their courses, admins all."""
from __future__ import annotations

from flask import Blueprint, request
from pydantic import Field
from spectree import Response
from typing_extensions import TypedDict

from auth import current_user, login_required
from models import ENROLLMENT_STATUSES, db
from utils.pipeline.idempotency import IdempotencyHeaders, idempotent
from utils.pipeline.signed_in_fast_path import signed_in_read, signed_in_write
from services import enrollment_service
from utils.errors import Conflict, NotFound
from utils.read_only import read_only
from utils.responses import (
    CertificateOut,
    EnrollmentListResponse,
    EnrollmentOut,
    EnrollmentProgressOut,
    EnrollmentWithCourseOut,
    LessonProgressOut,
    Timestamp,
)
from utils.validation import PageQuery, StrictModel, errors, json_body, query_args, validate

bp = Blueprint("enrollments", __name__)
AUTH = {"tags": ["enrollments"], "security": {"bearer": []}}


class EnrollIn(StrictModel):
    course_id: int = Field(ge=1)


class ProgressIn(StrictModel):
    completed: bool | None = None
    watch_time_seconds: int | None = Field(None, ge=0, le=10 * 24 * 3600)


class EnrollmentQuery(PageQuery):
    status: str | None = Field(None, pattern=f"^({'|'.join(ENROLLMENT_STATUSES)})$")


class EnrollmentSavedResponse(TypedDict):
    """The enrollment (201 when it was created or re-opened, 200 when it already was)."""

    message: str
    enrollment: EnrollmentWithCourseOut


class EnrollmentResponse(TypedDict):
    """An enrollment with its progress and course."""

    enrollment: EnrollmentWithCourseOut


class EnrollmentCancelledResponse(TypedDict):
    """The enrollment, cancelled."""

    message: str
    enrollment: EnrollmentOut


class LessonStatusOut(TypedDict):
    """A lesson of the course and the student's progress in it, in course order."""

    lesson_id: int
    lesson_title: str
    module_id: int
    module_title: str
    completed: bool
    completed_at: Timestamp | None
    watch_time_seconds: int
    last_accessed_at: Timestamp | None


class CourseProgressResponse(TypedDict):
    """The enrollment's progress, lesson by lesson."""

    enrollment: EnrollmentProgressOut
    course_id: int
    lessons: list[LessonStatusOut]


class LessonProgressResponse(TypedDict):
    """A lesson's progress."""

    lesson_progress: LessonProgressOut


class ProgressRecordedResponse(TypedDict):
    """The lesson's progress after the change, and the enrollment's. When this completed the
    course (`course_completed`), `certificate` is the certificate it earned; it stays there on
    every later answer for the completed enrollment."""

    lesson_progress: LessonProgressOut
    course_completed: bool
    enrollment: EnrollmentProgressOut
    certificate: CertificateOut | None


def _enroll(course_id: int):
    enrollment, created = enrollment_service.enroll(current_user(), course_id)
    db.session.commit()
    progress = enrollment_service.progress_of(enrollment)
    body = enrollment_service.enrollment_dict(enrollment, progress)
    if created:
        return {"message": "Enrolled", "enrollment": body}, 201
    return {"message": "Already enrolled", "enrollment": body}, 200


@bp.post("")
@login_required
@validate(json=EnrollIn, headers=IdempotencyHeaders,
          resp=Response(HTTP_201=EnrollmentSavedResponse, HTTP_200=EnrollmentSavedResponse,
                        **errors(400, 401, 402, 403, 404, 409, 422)), **AUTH)
@idempotent
def enroll():
    """Enroll in a course: free courses at once; paid ones answer 402 until paid (payments
    enroll by themselves); missing prerequisites are 403, listed."""
    return _enroll(json_body().course_id)


@bp.post("/create-enrollments/<int:course_id>")
@login_required
@validate(headers=IdempotencyHeaders,
          resp=Response(HTTP_201=EnrollmentSavedResponse, HTTP_200=EnrollmentSavedResponse,
                        **errors(400, 401, 402, 403, 404, 409, 422)), **AUTH)
@idempotent
def enroll_by_path(course_id: int):
    """The API documentation's form of enrolling: the course in the path."""
    return _enroll(course_id)


@bp.get("")
@bp.get("/get-enrollments")
@login_required
@validate(query=EnrollmentQuery, resp=Response(HTTP_200=EnrollmentListResponse, **errors(401)),
          **AUTH)
def my_enrollments():
    """The signed-in user's enrollments with their progress, newest first."""
    args = query_args()
    return enrollment_service.learner_enrollment_page(
        current_user().id, (args.status,) if args.status else None, args.page, args.per_page)


@bp.get("/<int:enrollment_id>")
@login_required
@validate(resp=Response(HTTP_200=EnrollmentResponse, **errors(401, 404)), **AUTH)
def get_enrollment(enrollment_id: int):
    """An enrollment with its progress (the student's own; the course's instructor and admins
    read it too)."""
    enrollment = enrollment_service.own_enrollment(enrollment_id, current_user())
    progress = enrollment_service.progress_of(enrollment)
    return {"enrollment": enrollment_service.enrollment_dict(enrollment, progress)}


@bp.delete("/<int:enrollment_id>")
@login_required
@validate(resp=Response(HTTP_200=EnrollmentCancelledResponse, **errors(401, 404, 409)), **AUTH)
def cancel_enrollment(enrollment_id: int):
    """Leave a course (progress is kept; enrolling again resumes it). Paid enrollments end
    through a refund request instead."""
    user = current_user()
    enrollment = enrollment_service.own_enrollment(enrollment_id, user)
    if enrollment.user_id != user.id:
        raise NotFound("Enrollment not found")
    if enrollment.payment_id is not None:
        raise Conflict("A paid enrollment ends through a refund request",
                       code="use_refund_request")
    enrollment_service.cancel(enrollment)
    db.session.commit()
    return {"message": "Enrollment cancelled", "enrollment": enrollment.to_dict()}


def _progress(caller, _args, enrollment_id: int) -> dict:
    return enrollment_service.detailed_progress(caller, enrollment_id=enrollment_id)


@bp.get("/<int:enrollment_id>/progress")
@signed_in_read(_progress)
@login_required
@validate(resp=Response(HTTP_200=CourseProgressResponse, **errors(401, 404)), **AUTH)
@read_only
def enrollment_progress(enrollment_id: int):
    """Progress lesson by lesson."""
    return _progress(current_user(), None, enrollment_id)


@bp.get("/get-enrollments/<int:course_id>/progress")
@login_required
@validate(resp=Response(HTTP_200=CourseProgressResponse, **errors(401, 404)), **AUTH)
def course_progress(course_id: int):
    """The API documentation's progress path: the signed-in user's progress in a course."""
    return enrollment_service.detailed_progress(current_user(), course_id=course_id)


def _completion(body, default_completed: bool | None) -> bool | None:
    """What a progress write does to the lesson's completion: what the body says, else
    `default_completed` for a body that says nothing (a body carrying just watch time records
    watch time: None)."""
    sent = body.model_fields_set if body else set()
    return body.completed if "completed" in sent else (default_completed if not sent else None)


def _record(lesson_id: int, default_completed: bool | None, **enrollment):
    """`enrollment`: its id, or its course's."""
    body = json_body() if request.content_length else None
    answer = enrollment_service.record_progress(
        current_user().id, lesson_id, completed=_completion(body, default_completed),
        watch_time_seconds=body.watch_time_seconds if body else None, **enrollment)
    db.session.commit()
    return answer


def _heartbeat(default_completed: bool | None):
    """The signed-in fast path's writer for a progress route: a heartbeat (no completion
    changed) in its one statement, committed as it returns; None for any other write, or one
    the statement leaves to the full path (enrollment_service.heartbeat)."""

    def writer(caller, body, lesson_id: int, **enrollment):
        if _completion(body, default_completed) is not None:
            return None
        return enrollment_service.heartbeat(caller.id, lesson_id, body.watch_time_seconds,
                                            enrollment)

    return writer


@bp.post("/<int:enrollment_id>/lessons/<int:lesson_id>/complete")
@signed_in_write(_heartbeat(True))
@login_required
@validate(json=ProgressIn, resp=Response(HTTP_200=ProgressRecordedResponse,
                                         **errors(401, 403, 404)), **AUTH)
def complete_lesson(enrollment_id: int, lesson_id: int):
    """Mark a lesson complete (or send `{"completed": false}` / `watch_time_seconds`)."""
    # Teachers read progress; only the student writes it (another's enrollment is 404).
    return _record(lesson_id, True, enrollment_id=enrollment_id)


@bp.get("/get-enrollments/<int:course_id>/lessons/<int:lesson_id>/progress")
@login_required
@validate(resp=Response(HTTP_200=LessonProgressResponse, **errors(401, 404)), **AUTH)
def read_lesson_progress(course_id: int, lesson_id: int):
    """One lesson's progress in a course the user is enrolled in."""
    enrollment = enrollment_service.my_enrollment_for_course(current_user(), course_id)
    return {"lesson_progress": enrollment_service.lesson_progress(enrollment, lesson_id)}


@bp.post("/get-enrollments/<int:course_id>/lessons/<int:lesson_id>/progress")
@bp.put("/get-enrollments/<int:course_id>/lessons/<int:lesson_id>/progress")
@signed_in_write(_heartbeat(None))
@login_required
@validate(json=ProgressIn, resp=Response(HTTP_200=ProgressRecordedResponse,
                                         **errors(401, 403, 404)), **AUTH)
def write_lesson_progress(course_id: int, lesson_id: int):
    """Record a lesson's progress (`{completed?, watch_time_seconds?}`) by course id."""
    return _record(lesson_id, None, course_id=course_id)
